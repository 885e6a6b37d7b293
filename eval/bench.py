"""Point a workload at any SGLang server and get one JSON of what it measured.

    python -m eval.bench --url http://127.0.0.1:30000 --workload agents --out run.json \\
        --set sessions=8 --set tool_delay_median_s=1.5

Workloads, each seeded and recorded with every setting in the result:

- ``long-multi-turn``: sessions reading a long document, then short follow-ups after thinking
  (``eval.workloads.LongMultiTurn``);
- ``agents``: Poisson-arriving agent programs waiting on tools (``eval.agent_workload``), with
  job completion times;
- ``mooncake``: the shared Mooncake conversation trace, cut and time-scaled
  (``eval.mooncake_trace.TraceCut``), replayed open loop;
- ``generated-shared-prefix``: SGLang's shape of that name, groups of prompts sharing a system
  prompt (``SharedPrefixGroups``), all sent at once.

``--set name=value`` overrides a field of the workload's settings (a pair as ``a,b``). The
result holds the card, commit and date, the server's cache settings from /get_server_info, the
workload's settings, TTFT / TPOT / hit-rate statistics, every call's (session, turn, prompt
tokens, cached tokens, TTFT) row (``calls``: ``python -m eval.sim calls`` lines them up with a
simulated run's), and AsymCache's counters when the server runs it. Pointed at an sglang-router
(``eval.server.SGLangRouter``), it runs the workload through the router and adds each replica's
share (``replicas``: its prompt and cached tokens from its /metrics, hit rate, AsymCache
counters); the replicas need ``--enable-metrics``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from eval.agent_workload import AgentPrograms, run_agent_programs, summarize_jobs
from eval.common import (
    asymcache_counters,
    call_rows,
    counters_since,
    prometheus_total,
    result_header,
    summarize_requests,
)
from eval.mooncake_trace import TraceCut, load_trace, replay
from eval.workloads import LongMultiTurn, TurnResult, generate_streaming, run_long_multi_turn

# What /get_server_info says about the cache, copied into every result.
SERVER_FIELDS = (
    "model_path", "max_total_num_tokens", "chunked_prefill_size", "radix_eviction_policy",
    "disable_radix_cache", "enable_asymcache", "attention_backend", "page_size",
)  # fmt: skip


@dataclass(frozen=True)
class SharedPrefixGroups:
    """SGLang bench_serving's ``generated-shared-prefix``: ``groups`` system prompts, each shared
    by ``prompts_per_group`` prompts that add their own question."""

    groups: int = 8
    prompts_per_group: int = 16
    system_prompt_tokens: int = 2048
    question_tokens: int = 128
    output_tokens: int = 64
    max_in_flight: int = 32
    vocab: tuple[int, int] = (10, 120000)
    seed: int = 0

    def prompts(self) -> list[list[int]]:
        """Group by group, in order."""
        rng = random.Random(self.seed)
        lo, hi = self.vocab
        out = []
        for _ in range(self.groups):
            system = [rng.randrange(lo, hi) for _ in range(self.system_prompt_tokens)]
            for _ in range(self.prompts_per_group):
                out.append(system + [rng.randrange(lo, hi) for _ in range(self.question_tokens)])
        return out


def run_shared_prefix(url: str, workload: SharedPrefixGroups) -> list[TurnResult]:
    """Every prompt at once (``max_in_flight`` at a time); a result's session is its group."""

    def send(index: int, prompt: list[int]) -> TurnResult:
        res = generate_streaming(url, prompt, workload.output_tokens, return_logprob=False)
        res.session, res.turn = divmod(index, workload.prompts_per_group)
        return res

    prompts = workload.prompts()
    with ThreadPoolExecutor(workload.max_in_flight) as pool:
        return list(pool.map(send, range(len(prompts)), prompts))


@dataclass(frozen=True)
class Workload:
    settings: type
    run: Callable[[str, Any], dict[str, Any]]


def _summary(results: Sequence[TurnResult]) -> dict[str, Any]:
    return {**summarize_requests(results), "calls": call_rows(results)}


def _agents(url: str, workload: AgentPrograms) -> dict[str, Any]:
    jobs = run_agent_programs(url, workload)
    return {**_summary([c for job in jobs for c in job.calls]), **summarize_jobs(jobs)}


WORKLOADS = {
    "long-multi-turn": Workload(
        LongMultiTurn, lambda url, w: _summary(run_long_multi_turn(url, w))
    ),
    "agents": Workload(AgentPrograms, _agents),
    "mooncake": Workload(TraceCut, lambda url, cut: _summary(replay(url, load_trace(cut)))),
    "generated-shared-prefix": Workload(
        SharedPrefixGroups, lambda url, w: _summary(run_shared_prefix(url, w))
    ),
}


def parse_overrides(settings: type, pairs: Sequence[str]) -> dict[str, Any]:
    """``name=value`` pairs as typed keyword arguments for the ``settings`` dataclass."""
    defaults = settings()
    fields = {f.name for f in dataclasses.fields(settings)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {pair!r}: expected name=value, name one of {sorted(fields)}")
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            out[name] = tuple(type(d)(part) for d, part in zip(default, text.split(",")))
            if len(out[name]) != len(default):
                raise ValueError(f"--set {pair!r}: expected {len(default)} comma-separated values")
        elif isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(f"--set {pair!r}: expected true or false")
            out[name] = text.lower() == "true"
        elif default is None:
            out[name] = int(text)
        else:
            out[name] = type(default)(text)
    return out


def server_settings(url: str) -> dict[str, Any]:
    info = requests.get(f"{url}/get_server_info", timeout=60)
    info.raise_for_status()
    return {key: info.json().get(key) for key in SERVER_FIELDS}


def router_workers(url: str) -> list[str] | None:
    """The replicas behind ``url`` when it is an sglang-router (its /workers), else None."""
    info = requests.get(f"{url}/get_server_info", timeout=60)
    info.raise_for_status()
    if not info.json().get("router_manager"):
        return None
    workers = requests.get(f"{url}/workers", timeout=60)
    workers.raise_for_status()
    return [worker["url"] for worker in workers.json()["workers"]]


def replica_state(url: str) -> dict[str, Any]:
    """What a replica has served so far: SGLang's prompt and cached token totals (its /metrics,
    with --enable-metrics) and AsymCache's counters."""
    return {
        "prompt_tokens": prometheus_total(url, "sglang:prompt_tokens_total"),
        "cached_tokens": prometheus_total(url, "sglang:cached_tokens_total"),
        "asymcache": asymcache_counters(url),
    }


def replica_run(url: str, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One replica's part of a run behind a router: its tokens, hit rate and counters."""
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    cached = after["cached_tokens"] - before["cached_tokens"]
    return {
        "url": url,
        "server": server_settings(url),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "token_hit_rate": cached / prompt if prompt else None,
        "asymcache": counters_since(before["asymcache"], after["asymcache"]),
    }


def run_bench(url: str, name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """One run of workload ``name`` against the server or sglang-router at ``url``: the result
    JSON's content (behind a router, each replica's share under ``replicas``)."""
    workload = WORKLOADS[name]
    settings = workload.settings(**parse_overrides(workload.settings, overrides))
    workers = router_workers(url)
    if workers is None:
        server = server_settings(url)
        counters_before = asymcache_counters(url)
    else:
        server = {"router": url, "replicas": len(workers)}
        replicas_before = {worker: replica_state(worker) for worker in workers}
    start = time.perf_counter()
    metrics = workload.run(url, settings)
    duration_s = time.perf_counter() - start
    result = {
        **result_header(),
        "url": url,
        "server": server,
        "workload": {"name": name, **dataclasses.asdict(settings)},
        "metrics": {
            **metrics,
            "duration_s": duration_s,
            # Prefill throughput: the prompt tokens the server computed, over the run.
            "computed_prompt_tokens_per_s": metrics["computed_prompt_tokens"] / duration_s,
        },
    }
    if workers is None:
        return {**result, "asymcache": counters_since(counters_before, asymcache_counters(url))}
    replicas = [replica_run(w, replicas_before[w], replica_state(w)) for w in workers]
    return {**result, "replicas": replicas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the SGLang server, e.g. http://host:30000")
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        result = run_bench(args.url, args.workload, args.set)
    except ValueError as exc:
        parser.error(str(exc))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["metrics"], indent=2))


if __name__ == "__main__":
    main()
