"""Do holes engage in real serving? Stock SGLang 0.5.16 (radix, LRU) and AsymCache on one GPU.

Parts, each one call on the GPU host (``source .gpu/host_env.sh`` and the install first; a
config-only Llama-3-8B folder from ``.gpu/make_model.py DIR --preset llama3-8b``):

- ``pressure``: a long multi-turn workload (20-28K-token documents, short follow-ups, think times
  of seconds) on a pool that holds less than half of the live sessions' KV, at the default chunk
  size. Then the AsymCache server's position cost (below), after the run.
- ``no_pressure``: the same workload on a pool that holds everything, with CUDA graphs at
  SGLang's defaults and again with ``--disable-cuda-graph``; AsymCache / stock ratios, over
  ``--repeats`` runs per server (eager decode is bound by the host, whose speed drifts by up to
  x1.8 over tens of seconds). ``--method interleaved``: each server runs the whole workload
  alone in turn; ``paired``: both at the same time, on their own cores; ``rounds``: every
  session's turn t together on one server, then on the other, the order alternating round by
  round, so the servers' measurements are seconds apart.
- ``overhead``: both servers eager under a decode-only load, TPOT at batch sizes 1 and 8, with
  ``eval.stack_sampler`` profiling their schedulers during the load.

Position cost: an extend of 2,048 new tokens behind a cached prefix of 0 / 8K / 16K / 32K / 48K
tokens, each timed several times by the AsymCache server's own forward timer (CUDA events, its
latency trace), as measured per-token cost normalised to prefix 0; beside it, what the extend cost
model gives eviction for the same tokens, from the fit as it was right after start-up and after
the run.

Servers run with the same flags except ``--enable-asymcache``, are started together a little
apart and measured one at a time. Each part writes ``<out>/engage_<part>.json``; ``merge`` joins
them into ``eval/results/<card>_engage.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asymcache_sglang.core.config import LATENCY_TRACE_ENV
from asymcache_sglang.core.cost import LatencyCostModel, StaticCostModel
from asymcache_sglang.core.latency_fit import LatencyView
from eval.common import (
    asymcache_counters,
    asymcache_latency,
    flush_cache,
    read_json,
    result_header,
    save_figure,
    server_health,
    summarize_requests,
    summary_stats,
)
from eval.host_cpus import CpuLayout, isolate, paired_cores, set_affinity, steal_seconds
from eval.report import grouped_bars
from eval.server import SGLangServer, start_staggered, stock_env
from eval.workloads import (
    LongMultiTurn,
    LongMultiTurnRounds,
    TurnResult,
    generate_streaming,
    run_long_multi_turn,
    tpot_s,
)

POSITION_PREFIXES = (0, 8192, 16384, 32768, 49152)
# 2,048 new tokens (the yardstick); and a whole default chunk, the size evicted KV is
# recomputed in, where the pool holds the extra KV.
POSITION_NEW_TOKENS = (2048,)
POSITION_NEW_TOKENS_BIG_POOL = (2048, 8192)
POSITION_REPEATS = 3
# Start-up gap between servers sharing the card, so their memory profiling does not overlap.
STAGGER_S = 20.0


def server_args(pool_tokens: int, *extra: str) -> list[str]:
    """Flags every server gets: CUDA graphs and chunk size at SGLang's defaults."""
    return [
        "--load-format", "dummy",
        "--skip-tokenizer-init",
        "--grammar-backend", "none",
        "--attention-backend", "flashinfer",
        "--max-total-tokens", str(pool_tokens),
        "--mem-fraction-static", "0.88",
        *extra,
    ]  # fmt: skip


def make_servers(
    model: str, log_dir: Path, flags: list[str], *, sampler_dirs: dict[str, Path] | None = None
) -> dict[str, SGLangServer]:
    """Stock and AsymCache servers with ``flags``; AsymCache writes its latency trace."""
    servers = {}
    for name in ("stock", "asymcache"):
        env = stock_env() if name == "stock" else dict(os.environ)
        if name == "asymcache":
            env[LATENCY_TRACE_ENV] = str(log_dir / f"{name}.trace.jsonl")
        if sampler_dirs is not None:
            site = Path(__file__).resolve().parent / "stack_sampler_site"
            env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
            env["ASYMCACHE_STACK_SAMPLES"] = str(sampler_dirs[name])
        extra = flags + (["--enable-asymcache"] if name == "asymcache" else [])
        servers[name] = SGLangServer(
            model, extra_args=extra, env=env, log_path=log_dir / f"{name}.log", timeout_s=900
        )
    return servers


def stop_all(servers: dict[str, SGLangServer]) -> None:
    for server in servers.values():
        server.stop()


def extend_fit(url: str) -> dict[str, Any]:
    """The extend cost model's state as /get_server_info reports it."""
    return asymcache_latency(url)["extend_fit"]


def model_relative_cost(fit: dict[str, Any], prefix: int, new: int) -> float | None:
    """The extend cost model's per-token cost of positions [prefix, prefix + new) over [0, new),
    for KV recomputed in extends of ``new`` tokens: what eviction gets with a chunk of ``new``.
    None while the fit is not ready (eviction then uses the static cost)."""
    if not fit["ready"]:
        return None
    c0, c1, c2, _, _, c5 = fit["coefficients"]
    cost = LatencyCostModel(StaticCostModel(), recompute_chunk_tokens=new)
    cost.view = LatencyView(extend_coefficients=(c0 + c5, c1, c2), extend_ready=True)
    return cost.cost_per_token(prefix, prefix + new) / cost.cost_per_token(0, new)


def measure_position_cost(
    url: str, trace: Path, sizes: Sequence[int], vocab_high: int = 120000
) -> dict[str, Any]:
    """Median step time (s) of extends of each size behind each cached prefix, from the server's
    latency trace (the forward timer's CUDA-event times), and the cached tokens each request
    reported (an extend whose prefix was not all cached is not a sample)."""
    flush_cache(url)
    rng = random.Random(7)
    prompt = [rng.randrange(10, vocab_high) for _ in range(max(POSITION_PREFIXES) + max(sizes))]
    start_offset = trace.stat().st_size
    first = generate_streaming(url, prompt, 1, return_logprob=False)
    cached: dict[str, list[int]] = {"prompt": [first.cached_tokens]}
    for new in sizes:
        for _ in range(POSITION_REPEATS):
            for prefix in POSITION_PREFIXES:
                fresh = [rng.randrange(10, vocab_high) for _ in range(new)]
                res = generate_streaming(url, prompt[:prefix] + fresh, 1, return_logprob=False)
                cached.setdefault(f"{new}@{prefix}", []).append(res.cached_tokens)
    times: dict[tuple[int, int], list[float]] = {
        (new, prefix): [] for new in sizes for prefix in POSITION_PREFIXES
    }
    with trace.open() as f:
        f.seek(start_offset)
        for line in f:
            step = json.loads(line)
            new = step["new_tokens"]
            if new not in sizes or step["decode_reqs"]:
                continue
            key = (new, round(step["new_ctx"] / new - new / 2))
            if key in times:
                times[key].append(step["seconds"])
    return {
        "step_s": {k: statistics.median(t) if t else None for k, t in times.items()},
        "samples": {f"{n}@{p}": len(t) for (n, p), t in times.items()},
        "cached_tokens": cached,
    }


def model_against(
    relative: dict[int, float | None], fits: dict[str, dict[str, Any]], new: int
) -> dict[str, Any]:
    """Per fit: the model's per-token cost at each prefix for extends of ``new`` tokens, and its
    worst relative gap from the measured ``relative`` (None where either is missing)."""
    out = {}
    for when, fit in fits.items():
        model = {p: model_relative_cost(fit, p, new) for p in relative}
        errors = [
            abs(m / relative[p] - 1.0) if m is not None and relative[p] else None
            for p, m in model.items()
        ]
        out[when] = {
            "model_relative": {str(p): m for p, m in model.items()},
            "max_rel_err": None if None in errors else max(errors),
        }
    return out


def position_cost(measured: dict[str, Any], fits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per size: measured and modelled per-token cost, normalised to prefix 0, and the worst
    relative gap of the model (right after start-up, after the run) from the measurement."""
    out: dict[str, Any] = {
        "repeats": POSITION_REPEATS,
        "samples": measured["samples"],
        "cached_tokens": measured["cached_tokens"],
    }
    for new in sorted({n for n, _ in measured["step_s"]}):
        step_s = {p: t for (n, p), t in measured["step_s"].items() if n == new}
        base = step_s[0]
        relative = {p: t / base if t and base else None for p, t in step_s.items()}
        entry: dict[str, Any] = {
            "measured_step_s": {str(p): t for p, t in step_s.items()},
            "measured_relative": {str(p): r for p, r in relative.items()},
        }
        out[f"new_{new}"] = {**entry, **model_against(relative, fits, new)}
    out["extend_fits"] = fits
    return out


def run_workload(server: SGLangServer, workload: LongMultiTurn, asym: bool) -> dict[str, Any]:
    return summarize_run(server, run_long_multi_turn(server.url, workload), asym)


def summarize_run(server: SGLangServer, results: list[TurnResult], asym: bool) -> dict[str, Any]:
    out = {**summarize_requests(results), **server_health(server)}
    if asym:
        out["counters"] = asymcache_counters(server.url)
    return out


Repeat = Callable[[int], tuple[dict[str, list[TurnResult]], dict[str, Any]]]


def run_repeats(
    servers: dict[str, SGLangServer], repeats: int, one_repeat: Repeat
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``one_repeat(r)``: each server's results of repeat ``r`` and fields to record beside its
    ratios. Per server the summary over every repeat's requests, and each repeat's ratios."""
    results: dict[str, list[TurnResult]] = {name: [] for name in servers}
    per_repeat = []
    for repeat in range(repeats):
        this, extra = one_repeat(repeat)
        for name in servers:
            results[name] += this[name]
        per_repeat.append(
            ratios(summarize_requests(this["stock"]), summarize_requests(this["asymcache"])) | extra
        )
        print(f"repeat {repeat + 1}/{repeats}: {json.dumps(per_repeat[-1])}", flush=True)
    runs = {n: summarize_run(s, results[n], n == "asymcache") for n, s in servers.items()}
    return runs, per_repeat


def run_interleaved(
    servers: dict[str, SGLangServer],
    workload: LongMultiTurn,
    repeats: int,
    layout: CpuLayout | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The workload ``repeats`` times on each server from an empty cache, each measured alone on
    its share of the host's cores (``layout``), the server that goes first alternating (stock,
    AsymCache, AsymCache, stock, ...) so drift on the host falls on both; with each repeat's
    ratios the CPU time stolen from the host during each server's run."""

    def one_repeat(repeat: int) -> tuple[dict[str, list[TurnResult]], dict[str, Any]]:
        order = list(servers) if repeat % 2 == 0 else list(reversed(servers))
        this, stolen = {}, {}
        for name in order:
            flush_cache(servers[name].url)
            isolate(layout, servers[name], servers.values())
            before = steal_seconds()
            this[name] = run_long_multi_turn(servers[name].url, workload)
            stolen[f"{name}_steal_s"] = steal_seconds() - before
        return this, stolen

    return run_repeats(servers, repeats, one_repeat)


def run_paired(
    servers: dict[str, SGLangServer], workload: LongMultiTurn, repeats: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Like ``run_interleaved``, but in each repeat both servers run the workload at the same
    time, each on its own half of the host's cores (``pin_pair``, the halves swapped every
    repeat): drift in the host's speed falls on both alike, and a slower half on each in turn,
    at the price of the two sharing the card."""

    def one_repeat(repeat: int) -> tuple[dict[str, list[TurnResult]], dict[str, Any]]:
        pin_pair(servers, swap=repeat % 2 == 1)
        for server in servers.values():
            flush_cache(server.url)
        with ThreadPoolExecutor(len(servers)) as pool:
            runs = pool.map(lambda s: run_long_multi_turn(s.url, workload), servers.values())
            return dict(zip(servers, runs)), {}

    return run_repeats(servers, repeats, one_repeat)


def run_rounds(
    servers: dict[str, SGLangServer],
    workload: LongMultiTurn,
    repeats: int,
    layout: CpuLayout | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each repeat, from emptied caches and with its own seed, the workload round by round
    (``LongMultiTurnRounds``): a round on one server alone on its cores (``layout``), then the
    same round on the other, the server that goes first alternating from round to round."""

    def one_repeat(repeat: int) -> tuple[dict[str, list[TurnResult]], dict[str, Any]]:
        seeded = dataclasses.replace(workload, seed=workload.seed + repeat)
        for server in servers.values():
            flush_cache(server.url)
        replays = {name: LongMultiTurnRounds(seeded) for name in servers}
        this: dict[str, list[TurnResult]] = {name: [] for name in servers}
        per_round = []
        for turn in range(workload.turns):
            order = list(servers) if (repeat + turn) % 2 == 0 else list(reversed(servers))
            got = {}
            for name in order:
                isolate(layout, servers[name], servers.values())
                got[name] = replays[name].run_round(servers[name].url, turn)
                this[name] += got[name]
            summaries = {name: summarize_requests(results) for name, results in got.items()}
            per_round.append(ratios(summaries["stock"], summaries["asymcache"]))
        return this, {"rounds": per_round}

    return run_repeats(servers, repeats, one_repeat)


def round_ratio_intervals(per_repeat: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Over every round of every repeat, each ratio's geometric mean with a 95% interval (the
    mean of the log ratios, +-1.96 standard errors): rounds are seconds apart, so the host's
    drift falls on both servers of a round alike."""
    rounds = [r for repeat in per_repeat for r in repeat["rounds"]]
    out = {}
    for key in ("ttft_ratio", "tpot_ratio"):
        logs = [math.log(r[key]) for r in rounds]
        mean = statistics.fmean(logs)
        half = 1.96 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else math.inf
        out[key] = {
            "geomean": math.exp(mean), "low": math.exp(mean - half), "high": math.exp(mean + half),
            "rounds": len(logs),
        }  # fmt: skip
    return out


def pin_pair(servers: dict[str, SGLangServer], swap: bool) -> None:
    """This process on the client's cores, the two servers on the two halves (``swap``: the
    other way round); nothing on a host too small to split."""
    cores = paired_cores()
    if cores is None:
        return
    set_affinity(os.getpid(), cores[0], with_children=False)
    shares = cores[2:0:-1] if swap else cores[1:]
    for server, share in zip(servers.values(), shares):
        if server.proc is not None:
            set_affinity(server.proc.pid, share, with_children=True)


def paired_decode_probes(servers: dict[str, SGLangServer], repeats: int) -> dict[str, Any]:
    """``decode_probe`` at batch sizes 1 and 8 on both servers at the same time, ``repeats``
    times, the cores swapped every repeat; the TPOT ratio of the means, and per repeat."""
    probes: dict[str, dict[str, list[dict[str, float]]]] = {
        n: {"bs1": [], "bs8": []} for n in servers
    }
    for repeat in range(repeats):
        pin_pair(servers, swap=repeat % 2 == 1)
        for bs in (1, 8):
            with ThreadPoolExecutor(len(servers)) as pool:
                got = pool.map(lambda s, b=bs: decode_probe(s.url, b), servers.values())
                for name, probe in zip(servers, got):
                    probes[name][f"bs{bs}"].append(probe)
    return probe_ratios(probes, repeats)


def ratios(stock: dict[str, Any], asym: dict[str, Any]) -> dict[str, Any]:
    """AsymCache over stock; with both servers' TTFT stages (``--enable-metrics``), each stage's
    mean too, which says where a TTFT ratio comes from."""
    out: dict[str, Any] = {
        "ttft_ratio": asym["ttft_mean_s"] / stock["ttft_mean_s"],
        "ttft_p50_ratio": asym["ttft_p50_s"] / stock["ttft_p50_s"],
        "tpot_ratio": asym["tpot_mean_s"] / stock["tpot_mean_s"],
        "tpot_p50_ratio": asym["tpot_p50_s"] / stock["tpot_p50_s"],
    }
    if "ttft_stages" in stock and "ttft_stages" in asym:
        out["ttft_stage_ratios"] = {
            stage: asym["ttft_stages"][stage]["mean"] / stats["mean"]
            for stage, stats in stock["ttft_stages"].items()
            if stats["mean"] > 0
        }
    return out


def part_pressure(
    model: str, out: Path, workload: LongMultiTurn, pool: int, base_args: Sequence[str] = ()
) -> dict[str, Any]:
    flags = server_args(pool, *base_args)
    servers = make_servers(model, out, flags)
    try:
        start_staggered(list(servers.values()), STAGGER_S)
        asym = servers["asymcache"]
        at_startup = extend_fit(asym.url)
        layout = CpuLayout.for_host()
        runs = {}
        for name, server in servers.items():
            isolate(layout, server, servers.values())
            runs[name] = run_workload(server, workload, name == "asymcache")
        isolate(layout, asym, servers.values())
        after_run = extend_fit(asym.url)
        measured = measure_position_cost(
            asym.url, out / "asymcache.trace.jsonl", POSITION_NEW_TOKENS
        )
    finally:
        stop_all(servers)
    return {
        "pool_tokens": pool,
        "max_live_tokens": workload.max_live_tokens(),
        "server_args": flags,
        "cpu_layout": None if layout is None else asdict(layout),
        "runs": runs,
        "ratios": ratios(runs["stock"], runs["asymcache"]),
        "position_cost": position_cost(measured, {"startup": at_startup, "after_run": after_run}),
    }


CUDA_GRAPH_SETTINGS = {"cuda_graph_default": [], "disable_cuda_graph": ["--disable-cuda-graph"]}
# Where a no_pressure file keeps each setting's result, by how the pair was measured.
METHOD_SUFFIX = {"interleaved": "", "paired": "_paired", "rounds": "_rounds"}
NO_PRESSURE_ENTRIES = tuple(s + m for m in METHOD_SUFFIX.values() for s in CUDA_GRAPH_SETTINGS)


def part_no_pressure(
    model: str,
    out: Path,
    workload: LongMultiTurn,
    pool: int,
    settings: Sequence[str] = tuple(CUDA_GRAPH_SETTINGS),
    repeats: int = 1,
    method: str = "interleaved",
    base_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The workload with CUDA graphs at SGLang's defaults, then eager, ``repeats`` times per
    server, measured by ``method`` (``run_interleaved``, ``run_paired``, ``run_rounds``). The
    defaults pair's AsymCache server also measures the position cost; the eager pair runs the
    decode probe, alternating servers, ``repeats`` times."""
    paired = method == "paired"
    result: dict[str, Any] = {
        "pool_tokens": pool, "max_live_tokens": workload.max_live_tokens(), "repeats": repeats,
    }  # fmt: skip
    for setting in settings:
        extra = CUDA_GRAPH_SETTINGS[setting]
        flags = server_args(pool, *extra, *base_args)
        log_dir = out / setting
        log_dir.mkdir(parents=True, exist_ok=True)
        servers = make_servers(model, log_dir, flags)
        try:
            start_staggered(list(servers.values()), STAGGER_S)
            asym = servers["asymcache"]
            at_startup = extend_fit(asym.url)
            layout = CpuLayout.for_host()
            if paired:
                runs, per_repeat = run_paired(servers, workload, repeats)
            elif method == "rounds":
                runs, per_repeat = run_rounds(servers, workload, repeats, layout)
            else:
                runs, per_repeat = run_interleaved(servers, workload, repeats, layout)
            entry = {
                "server_args": flags,
                "method": method,
                "cpu_layout": paired_cores()
                if paired
                else None
                if layout is None
                else asdict(layout),
                "runs": runs,
                **ratios(runs["stock"], runs["asymcache"]),
                "per_repeat_ratios": per_repeat,
            }
            if method == "rounds":
                entry["round_ratio_intervals"] = round_ratio_intervals(per_repeat)
            if extra:
                entry.update(
                    paired_decode_probes(servers, repeats)
                    if paired
                    else decode_probes(servers, repeats, layout)
                )
            else:
                isolate(layout, asym, servers.values())
                after_run = extend_fit(asym.url)
                measured = measure_position_cost(
                    asym.url, log_dir / "asymcache.trace.jsonl", POSITION_NEW_TOKENS_BIG_POOL
                )
                entry["position_cost"] = position_cost(
                    measured, {"startup": at_startup, "after_run": after_run}
                )
        finally:
            stop_all(servers)
        result[setting + METHOD_SUFFIX[method]] = entry
    return result


def decode_probes(
    servers: dict[str, SGLangServer], repeats: int, layout: CpuLayout | None
) -> dict[str, Any]:
    """``decode_probe`` at batch sizes 1 and 8, ``repeats`` times per server, each measured alone
    (``isolate``), the server that goes first alternating; the TPOT ratio of the means over the
    repeats, and per repeat."""
    probes: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {"bs1": [], "bs8": []} for name in servers
    }
    for repeat in range(repeats):
        order = list(servers) if repeat % 2 == 0 else list(reversed(servers))
        for name in order:
            isolate(layout, servers[name], servers.values())
            for bs in (1, 8):
                probes[name][f"bs{bs}"].append(decode_probe(servers[name].url, bs))

    return probe_ratios(probes, repeats)


def probe_ratios(
    probes: dict[str, dict[str, list[dict[str, float]]]], repeats: int
) -> dict[str, Any]:
    """The probes, AsymCache / stock TPOT of their means over the repeats, and per repeat."""

    def ratio(bs: str, runs: slice) -> float:
        means = {n: statistics.fmean(p["tpot_mean_s"] for p in probes[n][bs][runs]) for n in probes}
        return means["asymcache"] / means["stock"]

    return {
        "decode_probe": probes,
        "decode_probe_tpot_ratio": {bs: ratio(bs, slice(None)) for bs in ("bs1", "bs8")},
        "decode_probe_per_repeat_ratio": {
            bs: [ratio(bs, slice(r, r + 1)) for r in range(repeats)] for bs in ("bs1", "bs8")
        },
    }


def decode_probe(url: str, batch_size: int, output_tokens: int = 256) -> dict[str, float]:
    """TPOT of ``batch_size`` concurrent 1,024-token requests decoding ``output_tokens`` each."""
    rng = random.Random(batch_size)
    prompts = [[rng.randrange(10, 120000) for _ in range(1024)] for _ in range(batch_size)]
    with ThreadPoolExecutor(batch_size) as pool:
        results = list(
            pool.map(
                lambda p: generate_streaming(url, p, output_tokens, return_logprob=False), prompts
            )
        )
    tpot = summary_stats(t for t in map(tpot_s, results) if t is not None)
    return {"tpot_mean_s": tpot["mean"], "tpot_p50_s": tpot["p50"], "tpot_max_s": tpot["max"]}


def part_overhead(
    model: str, out: Path, pool: int, base_args: Sequence[str] = ()
) -> dict[str, Any]:
    flags = server_args(pool, "--disable-cuda-graph", *base_args)
    sampler_dirs = {name: out / f"samples_{name}" for name in ("stock", "asymcache")}
    servers = make_servers(model, out, flags, sampler_dirs=sampler_dirs)
    runs: dict[str, Any] = {}
    try:
        start_staggered(list(servers.values()), STAGGER_S)
        for name, server in servers.items():
            decode_probe(server.url, 1, 16)  # warm
            flag = sampler_dirs[name] / "on"
            flag.touch()
            runs[name] = {f"bs{bs}": decode_probe(server.url, bs) for bs in (1, 8)}
            flag.unlink()
            time.sleep(3)  # the sampler's last write
        measured = measure_position_cost(
            servers["asymcache"].url, out / "asymcache.trace.jsonl", POSITION_NEW_TOKENS
        )
        fit = extend_fit(servers["asymcache"].url)
    finally:
        stop_all(servers)
    return {
        "server_args": flags,
        "runs": runs,
        "tpot_ratio_bs1": runs["asymcache"]["bs1"]["tpot_mean_s"]
        / runs["stock"]["bs1"]["tpot_mean_s"],
        "tpot_ratio_bs8": runs["asymcache"]["bs8"]["tpot_mean_s"]
        / runs["stock"]["bs8"]["tpot_mean_s"],
        "position_cost": position_cost(measured, {"after_probe": fit}),
    }


PRESSURE_METRICS = (
    "ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_mean_s", "tpot_p50_s",
    "tpot_p90_s", "tpot_p99_s", "token_hit_rate",
)  # fmt: skip
PLAN_COUNTERS = (
    "plans", "chunk_fallbacks", "first_hole_chunks", "chunked_plans", "longest_plan_chunks",
    "planned_hole_tokens", "retained_tokens",
)  # fmt: skip


def summary(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's fields from the parts: pressure metrics and counters, no-pressure ratios, and
    the position cost per extend size (a size measured only on the no-pressure server is compared
    with the pressure server's fits, both from the same card)."""
    out: dict[str, Any] = {}
    if "pressure" in parts:
        runs = parts["pressure"]["runs"]
        out["pressure"] = {
            name: {
                **{k: run[k] for k in PRESSURE_METRICS},
                **{k: run["counters"][k] for k in PLAN_COUNTERS if "counters" in run},
            }
            for name, run in runs.items()
        }
        out["pressure"]["ratios"] = parts["pressure"]["ratios"]
    if "no_pressure" in parts:
        out["no_pressure"] = {
            setting: {k: v for k, v in parts["no_pressure"][setting].items() if "ratio" in k}
            for setting in NO_PRESSURE_ENTRIES
            if setting in parts["no_pressure"]
        }
    fits = parts.get("pressure", {}).get("position_cost", {}).get("extend_fits")
    if fits:
        position: dict[str, Any] = {}
        sources = [parts["pressure"]["position_cost"]]
        if "no_pressure" in parts:
            sources.append(parts["no_pressure"]["cuda_graph_default"]["position_cost"])
        for source in sources:
            for key, entry in source.items():
                if not key.startswith("new_") or key in position:
                    continue
                measured = {int(p): r for p, r in entry["measured_relative"].items()}
                position[key] = {
                    "measured_relative": entry["measured_relative"],
                    **model_against(measured, fits, int(key.removeprefix("new_"))),
                }
        out["position_cost"] = position
    return out


def plot(merged: dict[str, Any], out: Path) -> None:
    """Pressure TTFT per server; per-token extend cost by prefix, measured and modelled (nothing
    for a merge without a pressure part)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = merged["summary"]
    if "pressure" not in result or "position_cost" not in result:
        return  # a no-pressure file alone: its ratios are the whole result
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    runs = {k: v for k, v in result["pressure"].items() if k != "ratios"}
    grouped_bars(left, runs, PRESSURE_METRICS[:4], ["mean", "p50", "p90", "p99"])
    left.set_ylabel("TTFT, ms")
    left.set_title("Long multi-turn under pressure", fontsize=8)
    for key, entry in result["position_cost"].items():
        prefixes = [int(p) / 1024 for p in entry["measured_relative"]]
        line = right.plot(
            prefixes, entry["measured_relative"].values(), "o", label=f"{key} measured"
        )
        model = entry["after_run"]["model_relative"].values()
        right.plot(prefixes, model, "-", color=line[0].get_color(), label=f"{key} model")
    right.set_xlabel("cached prefix, K tokens")
    right.set_ylabel("per-token cost / at prefix 0")
    right.legend(fontsize=6)
    right.set_title("Extend cost by position", fontsize=8)
    fig.suptitle(merged["card"], fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def merge(parts: Sequence[Path], dest_dir: Path) -> Path:
    """Join part JSONs into ``<dest_dir>/<card>_engage.json`` with the issue's summary first."""
    loaded: dict[str, dict[str, Any]] = {}
    for path in parts:
        body = read_json(path)
        for setting in NO_PRESSURE_ENTRIES:
            if setting in body:
                # An entry merged before keeps its own commit.
                body[setting] = {"commit": body["commit"], "date": body["date"], **body[setting]}
        # A later no_pressure file (one CUDA graph setting rerun) replaces that setting only.
        loaded[body["part"]] = {**loaded.get(body["part"], {}), **body}
    card = next(iter(loaded.values()))["card"]
    slug = (
        "h200" if "H200" in card else "h100" if "H100" in card else card.lower().replace(" ", "_")
    )
    merged = {
        "card": card,
        "commits": {
            **{name: part["commit"] for name, part in loaded.items()},
            **{
                f"no_pressure.{setting}": loaded["no_pressure"][setting]["commit"]
                for setting in NO_PRESSURE_ENTRIES
                if setting in loaded.get("no_pressure", {})
            },
        },
        "summary": summary(loaded),
        "parts": loaded,
    }
    dest = dest_dir / f"{slug}_engage.json"
    # Compact: the merged file is tracked, and the repository stays small.
    dest.write_text(json.dumps(merged, separators=(",", ":")) + "\n")
    plot(merged, dest.with_suffix(".png"))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("part", choices=("pressure", "no_pressure", "overhead"))
    run.add_argument("--model", required=True)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--pool-tokens", type=int)
    settings = tuple(CUDA_GRAPH_SETTINGS)
    run.add_argument(
        "--settings", nargs="+", choices=settings, default=settings,
        help="no_pressure: the CUDA graph settings to run",
    )  # fmt: skip
    run.add_argument("--repeats", type=int, default=1, help="no_pressure: runs per server")
    run.add_argument(
        "--method", choices=tuple(METHOD_SUFFIX), default="interleaved",
        help="no_pressure: how the pair is measured (the module's docstring says each)",
    )  # fmt: skip
    run.add_argument(
        "--sessions", type=int, default=LongMultiTurn.sessions,
        help="the workload's sessions (fewer: two no-pressure servers fit an 80 GB card)",
    )  # fmt: skip
    run.add_argument(
        "--server-arg", action="append", default=[],
        help="for both servers (e.g. --server-arg=--enable-metrics: each TTFT split into stages)",
    )  # fmt: skip
    join = sub.add_parser("merge")
    join.add_argument("parts", type=Path, nargs="+")
    join.add_argument("--dest", type=Path, default=Path("eval/results"))
    args = parser.parse_args()
    if args.command == "merge":
        print(merge(args.parts, args.dest))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    workload = LongMultiTurn(sessions=args.sessions)
    if args.part == "pressure":
        pool = args.pool_tokens or 100_000
        body = part_pressure(args.model, args.out, workload, pool, args.server_arg)
    elif args.part == "no_pressure":
        pool = args.pool_tokens or workload.max_live_tokens() + 16_000
        body = part_no_pressure(
            args.model, args.out, workload, pool, args.settings, args.repeats, args.method,
            args.server_arg,
        )  # fmt: skip
    else:
        body = part_overhead(args.model, args.out, args.pool_tokens or 100_000, args.server_arg)
    result = {
        **result_header(),
        "part": args.part,
        "model": "Llama-3-8B geometry, --load-format dummy",
        "workload": asdict(workload) if args.part != "overhead" else None,
        **body,
    }
    path = args.out / f"engage_{args.part}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
