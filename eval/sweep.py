"""Every cache configuration at every pool size, on one workload: servers launched here.

    python -m eval.sweep --model M --workload agents --pools 40000,80000,160000 \\
        --configs lru,lfu,slru,priority,no-radix,asymcache --unlimited lru --out DIR
    python -m eval.sweep merge DIR1/sweep.json DIR2/sweep.json ... --out RESULTS/<card>_sweep.json

Each (configuration, pool) runs ``eval.bench`` on its own server; the servers differ only in the
configuration's flags and ``--max-total-tokens`` (``--unlimited C,...``: those configurations
once more at the pool SGLang sizes from memory, the limit). On a GPU the servers of one pool size
start together, ``--stagger-s`` apart, and are measured one at a time, each on its own share of
the host's cores (``eval.host_cpus``); with ``--gpus N`` (N > 1) server i runs on GPU i mod N and
the servers on different GPUs are measured at the same time; with ``--cpu`` or
``--one-at-a-time`` (a pool too large for two servers on the card) they run one after another.
A server whose pool is not the one asked for (the card could not hold it beside the others)
stops the sweep. ``--seeds 0,1,2`` runs each cell once per workload seed on the same
servers, flushing their caches before each run (``<config>_<pool>_seed<s>.json``; plots and
standings use the seeds' means). Writes ``DIR/<config>_<pool>.json`` per run (an AsymCache
server's latency trace beside it, ``.trace.jsonl``), ``DIR/sweep.json`` with all of them, and
``DIR/sweep.png``: TTFT mean (and job time, for agents) against pool size, one line per
configuration. ``merge`` joins sweeps from one card (several calls, or sessions) into one file
with every workload, the latest run of each (workload, configuration, pool, seed) kept, and
draws each workload's plots beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from asymcache_sglang.core.config import LATENCY_TRACE_ENV
from eval.bench import WORKLOADS, run_bench, server_settings
from eval.common import (
    STOCK_POLICIES,
    flush_cache,
    is_stock_configuration,
    read_json,
    result_header,
    result_stem,
    save_figure,
    write_compact_json,
)
from eval.host_cpus import CpuLayout, isolate
from eval.server import (
    SGLangServer,
    cpu_env,
    cpu_server_args,
    start_staggered,
    stock_cpu_env,
    stock_env,
)

# Flags of each configuration; those without --enable-asymcache run with no plugin loaded.
CONFIGURATIONS = {
    **{policy: ["--radix-eviction-policy", policy] for policy in STOCK_POLICIES},
    "no-radix": ["--disable-radix-cache"],
    "asymcache": ["--enable-asymcache"],
    # Cost-aware, leaf-only eviction: the position-aware key without holes.
    "asymcache-no-holes": ["--enable-asymcache", "--asymcache-max-holes", "0"],
    # The cost key without the programs' holds.
    "asymcache-no-holds": ["--enable-asymcache", "--asymcache-holds", "off"],
    # SGLang's cache-aware admission (longest prefix match first), a stock user's other lever.
    "lru+lpm": ["--radix-eviction-policy", "lru", "--schedule-policy", "lpm"],
    "asymcache+lpm": ["--enable-asymcache", "--schedule-policy", "lpm"],
}
UNLIMITED = "unlimited"


def server_for(
    model: str,
    config: str,
    pool: int | None,
    base_args: Sequence[str],
    log: Path,
    cpu: bool,
    gpu: int | None = None,
) -> SGLangServer:
    flags = CONFIGURATIONS[config]
    asym = "--enable-asymcache" in flags
    if cpu:
        env = cpu_env() if asym else stock_cpu_env()
        args = cpu_server_args()
    else:
        env = dict(os.environ) if asym else stock_env()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        args = []
    if asym:
        # The forward timings the simulator's step model is fitted to.
        env[LATENCY_TRACE_ENV] = str(log.with_suffix(".trace.jsonl"))
    pool_args = [] if pool is None else ["--max-total-tokens", str(pool)]
    return SGLangServer(
        model, extra_args=[*args, *base_args, *flags, *pool_args], env=env, log_path=log,
        timeout_s=900,
    )  # fmt: skip


def run_sweep(
    model: str,
    workload: str,
    overrides: Sequence[str],
    configs: Sequence[str],
    pools: Sequence[int],
    out: Path,
    *,
    unlimited: Sequence[str] = (),
    base_args: Sequence[str] = (),
    cpu: bool = False,
    stagger_s: float = 20.0,
    gpus: int = 1,
    seeds: Sequence[int] = (),
    one_at_a_time: bool = False,
) -> dict[str, Any]:
    """Run every configuration at every pool size, then the ``unlimited`` configurations at the
    pool SGLang sizes from memory; with ``seeds``, each run once per workload seed on the same
    servers, their caches flushed before each. On the CPU, or with ``one_at_a_time`` (pools too
    large for two servers on one card), each server runs alone: started, measured, stopped."""
    out.mkdir(parents=True, exist_ok=True)
    one_at_a_time = one_at_a_time or cpu
    cells: list[tuple[int | None, Sequence[str]]] = [(pool, configs) for pool in pools]
    if unlimited:
        cells.append((None, unlimited))
    # Servers measured one at a time on one card each get the host's cores to themselves.
    layout = CpuLayout.for_host() if not one_at_a_time and gpus == 1 else None
    runs = []
    progress = tqdm(
        total=sum(len(c) for _, c in cells) * max(1, len(seeds)), desc="sweep", unit="run"
    )
    for pool, pool_configs in cells:
        label = UNLIMITED if pool is None else str(pool)
        servers = {
            c: server_for(
                model, c, pool, base_args, out / f"{c}_{label}.log", cpu,
                gpu=i % gpus if gpus > 1 else None,
            )
            for i, c in enumerate(pool_configs)
        }  # fmt: skip
        try:
            if one_at_a_time:
                for config, server in servers.items():
                    server.start()
                    if pool is not None and not cpu:
                        check_pools({config: server}, pool)
                    for seed in seeds or [None]:
                        runs.append(_measure(server, config, label, workload, overrides, out, seed))
                        progress.update()
                    server.stop()
            else:
                start_staggered(list(servers.values()), stagger_s)
                if pool is not None:
                    check_pools(servers, pool)
                for seed in seeds or [None]:
                    measure = partial(
                        _measure_tick, servers, label, workload, overrides, out, progress, layout,
                        seed,
                    )  # fmt: skip
                    runs += measure_by_gpu(list(servers), gpus, measure)
        finally:
            for server in servers.values():
                server.stop()
    progress.close()
    sweep = {
        **result_header(),
        "model": model,
        "workload": workload,
        "overrides": list(overrides),
        "seeds": list(seeds),
        "base_args": list(base_args),
        "cpu_layout": None if layout is None else asdict(layout),
        "one_at_a_time": one_at_a_time,
        "configurations": {c: CONFIGURATIONS[c] for c in dict.fromkeys([*configs, *unlimited])},
        "runs": runs,
    }
    (out / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    plot(sweep, out / "sweep.png")
    plot_cdf(sweep, out / "sweep_cdf.png")
    return sweep


def check_pools(servers: dict[str, SGLangServer], pool: int) -> None:
    """Raise unless every server holds ``pool`` tokens: SGLang caps ``--max-total-tokens`` at
    what the card has left, which the servers started before took."""
    for config, server in servers.items():
        granted = server_settings(server.url)["max_total_num_tokens"]
        if granted != pool:
            raise RuntimeError(
                f"{config} at pool {pool}: the server holds {granted} tokens; the card cannot "
                "hold this many servers at this pool, run fewer configurations at a time"
            )


def measure_by_gpu(
    configs: list[str], gpus: int, measure: Callable[[str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """``measure`` of every configuration, those on one GPU (the i-th on GPU i mod ``gpus``)
    one after another and the GPUs side by side; results in ``configs`` order."""
    shares: dict[int, list[str]] = {}
    for i, config in enumerate(configs):
        shares.setdefault(i % gpus, []).append(config)
    with ThreadPoolExecutor(len(shares)) as pool:
        done = [
            r for rs in pool.map(lambda cs: [measure(c) for c in cs], shares.values()) for r in rs
        ]
    return sorted(done, key=lambda r: configs.index(r["config"]))


def _measure_tick(
    servers: dict[str, SGLangServer],
    pool: str,
    workload: str,
    overrides: Sequence[str],
    out: Path,
    progress: tqdm,
    layout: CpuLayout | None,
    seed: int | None,
    config: str,
) -> dict[str, Any]:
    isolate(layout, servers[config], servers.values())
    result = _measure(servers[config], config, pool, workload, overrides, out, seed)
    progress.update()
    return result


def _measure(
    server: SGLangServer,
    config: str,
    pool: str,
    workload: str,
    overrides: Sequence[str],
    out: Path,
    seed: int | None = None,
) -> dict[str, Any]:
    """One bench run; with ``seed``, of that workload seed on a flushed cache."""
    name = f"{config}_{pool}"
    if seed is not None:
        flush_cache(server.url)
        overrides, name = [*overrides, f"seed={seed}"], f"{name}_seed{seed}"
    result = {"config": config, "pool": pool, **run_bench(server.url, workload, overrides)}
    if seed is not None:
        result["seed"] = seed
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def plot(sweep: dict[str, Any], out: Path) -> None:
    """TTFT mean (and job time, when measured) against pool size, one line per configuration;
    the unlimited pool as a dashed floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = per_cell(sweep["runs"])
    metrics = ["ttft_mean_s"] + (["jct_mean_s"] if "jct_mean_s" in runs[0]["metrics"] else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for config in sweep["configurations"]:
            points = sorted(
                (int(r["pool"]), r["metrics"][metric])
                for r in runs
                if r["config"] == config and r["pool"] != UNLIMITED
            )
            if points:
                ax.plot(*zip(*points), marker="o", label=config)
            for r in runs:
                if r["config"] == config and r["pool"] == UNLIMITED:
                    ax.axhline(r["metrics"][metric], linestyle="--", linewidth=0.8)
        ax.set_xlabel("--max-total-tokens")
        ax.set_ylabel(metric)
        ax.legend(fontsize=6)
    fig.suptitle(f"{sweep['workload']}, {sweep['card']}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def cdf_pool(sweep: dict[str, Any]) -> str | None:
    """The middle bounded pool of the sweep: where the CDFs are drawn."""
    pools = sorted({int(r["pool"]) for r in sweep["runs"] if r["pool"] != UNLIMITED})
    return str(pools[len(pools) // 2]) if pools else None


def plot_cdf(sweep: dict[str, Any], out: Path, pool: str | None = None) -> None:
    """TTFT CDF of every configuration at ``pool`` (the middle one by default), and one of the
    unlimited pool's, dashed, where it ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pool = pool or cdf_pool(sweep)
    runs = per_cell(sweep["runs"])
    unlimited = [r for r in runs if r["pool"] == UNLIMITED][:1]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for run in [r for r in runs if r["pool"] == pool] + unlimited:
        samples = run["metrics"].get("ttft_samples_s")
        if not samples:
            continue
        fractions = [(i + 1) / len(samples) for i in range(len(samples))]
        dashed = run["pool"] == UNLIMITED
        label = "unlimited pool" if dashed else run["config"]
        ax.step(samples, fractions, where="post", linestyle="--" if dashed else "-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT, s")
    ax.set_ylabel("fraction of requests")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{sweep['workload']}, pool {pool}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def _workload_sweeps(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``eval.sweep`` run, or each workload of a file ``merge`` wrote, with its parts."""
    if "workloads" in result:
        return list(result["workloads"].values())
    part = {k: result.get(k) for k in ("commit", "date", "cpu_layout")}
    part["cells"] = sorted({f"{r['config']}@{r['pool']}" for r in result["runs"]})
    return [{**result, "parts": [part]}]


def merge(paths: Sequence[Path], dest: Path) -> dict[str, Any]:
    """Sweeps from one card (runs of ``eval.sweep``, or files this wrote) joined per workload,
    the latest run of each (configuration, pool, seed) kept; with each bounded pool's standing of
    AsymCache against the best stock policy. Writes ``dest`` and, beside it,
    ``<stem>_<workload>.png`` and ``<stem>_<workload>_cdf.png``. Written compact (gzipped for a
    ``.gz`` name): it is tracked."""
    sweeps = [w for p in paths for w in _workload_sweeps(read_json(p))]
    sweeps.sort(key=lambda s: min(p["date"] for p in s["parts"]))
    cards = {s["card"] for s in sweeps}
    if len(cards) != 1:
        raise ValueError(f"sweeps from different cards: {sorted(cards)}")
    workloads: dict[str, dict[str, Any]] = {}
    for sweep in sweeps:
        name = sweep["workload"]
        merged = workloads.setdefault(
            name,
            {
                "card": sweep["card"], "workload": name, "overrides": sweep["overrides"],
                "base_args": sweep["base_args"], "configurations": {}, "parts": [], "runs": {},
            },
        )  # fmt: skip
        for key in ("overrides", "base_args"):
            if sweep[key] != merged[key]:
                raise ValueError(
                    f"{name}: {key} differ between sweeps: {sweep[key]} vs {merged[key]}"
                )
        merged["configurations"].update(sweep["configurations"])
        merged["parts"] += [p for p in sweep["parts"] if p not in merged["parts"]]
        for run in sweep["runs"]:
            key = (run["config"], run["pool"], run.get("seed"))
            if key not in merged["runs"] or run["date"] >= merged["runs"][key]["date"]:
                merged["runs"][key] = run
    for merged in workloads.values():
        merged["parts"].sort(key=lambda p: p["date"])
        order = list(merged["configurations"])
        merged["runs"] = sorted(
            merged["runs"].values(),
            key=lambda r: (
                order.index(r["config"]),
                r["pool"] == UNLIMITED,
                _pool_key(r),
                r.get("seed", -1),
            ),
        )
        merged["standings"] = standings(merged["runs"])
    result = {"card": next(iter(cards)), "workloads": workloads}
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_compact_json(dest, result)
    for name, merged in workloads.items():
        plot(merged, dest.with_name(f"{result_stem(dest)}_{name}.png"))
        plot_cdf(merged, dest.with_name(f"{result_stem(dest)}_{name}_cdf.png"))
    return result


def _pool_key(run: dict[str, Any]) -> int:
    return 0 if run["pool"] == UNLIMITED else int(run["pool"])


def per_cell(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per (configuration, pool): the runs of several seeds as their mean (each metric
    both have; TTFT samples pooled), with ``seeds``, how many; in first-seen order."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["config"], run["pool"]), []).append(run)
    out = []
    for (config, pool), group in cells.items():
        metrics = {
            k: statistics.fmean(r["metrics"][k] for r in group)
            for k, v in group[0]["metrics"].items()
            if isinstance(v, (int, float)) and all(k in r["metrics"] for r in group)
        }
        samples = [x for r in group for x in r["metrics"].get("ttft_samples_s", [])]
        metrics["ttft_samples_s"] = sorted(samples)
        out.append({"config": config, "pool": pool, "seeds": len(group), "metrics": metrics})
    return out


def standings(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per bounded pool where AsymCache and a stock policy both ran: the stock policy with the
    lowest mean TTFT (any schedule policy: ``lru+lpm`` counts) and AsymCache's mean and p90 TTFT
    (and job time) over it; runs of several seeds by their means (``per_cell``)."""
    runs = per_cell(runs)
    out = []
    for pool in sorted({_pool_key(r) for r in runs if r["pool"] != UNLIMITED}):
        here = {r["config"]: r["metrics"] for r in runs if r["pool"] == str(pool)}
        stock = [c for c in here if is_stock_configuration(c)]
        if "asymcache" not in here or not stock:
            continue
        best = min(stock, key=lambda c: here[c]["ttft_mean_s"])
        entry: dict[str, Any] = {"pool": pool, "best_stock": best}
        for metric in ("ttft_mean_s", "ttft_p90_s", "jct_mean_s"):
            if metric in here[best]:
                entry[f"{metric.removesuffix('_s')}_ratio"] = (
                    here["asymcache"][metric] / here[best][metric]
                )
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="launch the servers and sweep one workload")
    run.add_argument("--model", required=True)
    run.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--configs", default=",".join(CONFIGURATIONS))
    run.add_argument("--pools", default="", help="comma-separated --max-total-tokens")
    run.add_argument(
        "--unlimited", default="", metavar="CONFIGS",
        help="comma-separated configurations to run once more at the unbounded pool",
    )  # fmt: skip
    run.add_argument("--server-arg", action="append", default=[], help="for every server")
    run.add_argument("--cpu", action="store_true", help="CPU servers, one at a time")
    run.add_argument("--stagger-s", type=float, default=20.0)
    run.add_argument("--gpus", type=int, default=1, help="spread the servers over N GPUs")
    run.add_argument(
        "--one-at-a-time", action="store_true",
        help="each server alone on the card: started, measured, stopped (pools too large to share)",
    )  # fmt: skip
    run.add_argument(
        "--seeds", default="", metavar="S,...",
        help="comma-separated workload seeds, each run on the same servers, caches flushed",
    )  # fmt: skip
    run.add_argument("--out", type=Path, required=True)
    join = commands.add_parser("merge", help="join sweeps from one card into one file")
    join.add_argument("sweeps", type=Path, nargs="+", help="sweep.json files")
    join.add_argument(
        "--out", type=Path, required=True, help="e.g. eval/results/h200_sweep.json.gz"
    )
    args = parser.parse_args()
    if args.command == "merge":
        try:
            merged = merge(args.sweeps, args.out)
        except ValueError as exc:
            parser.error(str(exc))
        print(json.dumps({w: m["standings"] for w, m in merged["workloads"].items()}, indent=2))
        return
    configs = [c for c in args.configs.split(",") if c]
    unlimited = [c for c in args.unlimited.split(",") if c]
    unknown = [c for c in configs + unlimited if c not in CONFIGURATIONS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {sorted(CONFIGURATIONS)}")
    pools = [int(p) for p in args.pools.split(",") if p]
    if not pools and not unlimited:
        parser.error("nothing to run: give --pools, --unlimited, or both")
    run_sweep(
        args.model, args.workload, args.set, configs, pools, args.out, unlimited=unlimited,
        base_args=args.server_arg, cpu=args.cpu, stagger_s=args.stagger_s, gpus=args.gpus,
        seeds=[int(x) for x in args.seeds.split(",") if x], one_at_a_time=args.one_at_a_time,
    )  # fmt: skip


if __name__ == "__main__":
    main()
