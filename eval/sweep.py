"""Every cache configuration at every pool size, on one workload: servers launched here.

    python -m eval.sweep --model M --workload agents --pools 40000,80000,160000 --unlimited \\
        --configs lru,lfu,slru,priority,no-radix,asymcache,asymcache-no-holes --out DIR

Each (configuration, pool) runs ``eval.bench`` on its own server; the servers differ only in the
configuration's flags and ``--max-total-tokens`` (``--unlimited``: the pool SGLang sizes from
memory, the limit). On a GPU the servers of one pool size start together, ``--stagger-s`` apart,
and are measured one at a time; with ``--gpus N`` (N > 1) server i runs on GPU i mod N and the
servers on different GPUs are measured at the same time; with ``--cpu`` they run one after
another. Writes
``DIR/<config>_<pool>.json`` per run, ``DIR/sweep.json`` with all of them, and ``DIR/sweep.png``:
TTFT mean (and job time, for agents) against pool size, one line per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.bench import WORKLOADS, run_bench
from eval.common import result_header
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
    **{
        policy: ["--radix-eviction-policy", policy] for policy in ("lru", "lfu", "slru", "priority")
    },
    "no-radix": ["--disable-radix-cache"],
    "asymcache": ["--enable-asymcache"],
    # Cost-aware, leaf-only eviction: the position-aware key without holes.
    "asymcache-no-holes": ["--enable-asymcache", "--asymcache-max-holes", "0"],
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
    pools: Sequence[int | None],
    out: Path,
    *,
    base_args: Sequence[str] = (),
    cpu: bool = False,
    stagger_s: float = 20.0,
    gpus: int = 1,
) -> dict[str, Any]:
    """Run every configuration at every pool size; ``None`` in ``pools`` is the unlimited pool."""
    out.mkdir(parents=True, exist_ok=True)
    # Servers measured one at a time on one card each get the host's cores to themselves.
    layout = CpuLayout.for_host() if not cpu and gpus == 1 else None
    runs = []
    progress = tqdm(total=len(pools) * len(configs), desc="sweep", unit="run")
    for pool in pools:
        label = UNLIMITED if pool is None else str(pool)
        servers = {
            c: server_for(
                model, c, pool, base_args, out / f"{c}_{label}.log", cpu,
                gpu=i % gpus if gpus > 1 else None,
            )
            for i, c in enumerate(configs)
        }  # fmt: skip
        try:
            if cpu:
                for config, server in servers.items():
                    server.start()
                    runs.append(_measure(server, config, label, workload, overrides, out))
                    server.stop()
                    progress.update()
            else:
                start_staggered(list(servers.values()), stagger_s)
                measure = partial(
                    _measure_tick, servers, label, workload, overrides, out, progress, layout
                )
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
        "base_args": list(base_args),
        "cpu_layout": None if layout is None else asdict(layout),
        "configurations": {c: CONFIGURATIONS[c] for c in configs},
        "runs": runs,
    }
    (out / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    plot(sweep, out / "sweep.png")
    plot_cdf(sweep, out / "sweep_cdf.png")
    return sweep


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
    config: str,
) -> dict[str, Any]:
    isolate(layout, servers[config], servers.values())
    result = _measure(servers[config], config, pool, workload, overrides, out)
    progress.update()
    return result


def _measure(
    server: SGLangServer, config: str, pool: str, workload: str, overrides: Sequence[str], out: Path
) -> dict[str, Any]:
    result = {"config": config, "pool": pool, **run_bench(server.url, workload, overrides)}
    (out / f"{config}_{pool}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def plot(sweep: dict[str, Any], out: Path) -> None:
    """TTFT mean (and job time, when measured) against pool size, one line per configuration;
    the unlimited pool as a dashed floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["ttft_mean_s"] + (
        ["jct_mean_s"] if "jct_mean_s" in sweep["runs"][0]["metrics"] else []
    )
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for config in sweep["configurations"]:
            points = sorted(
                (int(r["pool"]), r["metrics"][metric])
                for r in sweep["runs"]
                if r["config"] == config and r["pool"] != UNLIMITED
            )
            if points:
                ax.plot(*zip(*points), marker="o", label=config)
            for r in sweep["runs"]:
                if r["config"] == config and r["pool"] == UNLIMITED:
                    ax.axhline(r["metrics"][metric], linestyle="--", linewidth=0.8)
        ax.set_xlabel("--max-total-tokens")
        ax.set_ylabel(metric)
        ax.legend(fontsize=6)
    fig.suptitle(f"{sweep['workload']}, {sweep['card']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


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
    unlimited = [r for r in sweep["runs"] if r["pool"] == UNLIMITED][:1]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for run in [r for r in sweep["runs"] if r["pool"] == pool] + unlimited:
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
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--configs", default=",".join(CONFIGURATIONS))
    parser.add_argument("--pools", required=True, help="comma-separated --max-total-tokens")
    parser.add_argument("--unlimited", action="store_true", help="also the unbounded pool")
    parser.add_argument("--server-arg", action="append", default=[], help="for every server")
    parser.add_argument("--cpu", action="store_true", help="CPU servers, one at a time")
    parser.add_argument("--stagger-s", type=float, default=20.0)
    parser.add_argument("--gpus", type=int, default=1, help="spread the servers over N GPUs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGURATIONS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {sorted(CONFIGURATIONS)}")
    pools: list[int | None] = [int(p) for p in args.pools.split(",")]
    if args.unlimited:
        pools.append(None)
    run_sweep(
        args.model, args.workload, args.set, configs, pools, args.out,
        base_args=args.server_arg, cpu=args.cpu, stagger_s=args.stagger_s, gpus=args.gpus,
    )  # fmt: skip


if __name__ == "__main__":
    main()
