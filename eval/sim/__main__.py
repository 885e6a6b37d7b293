"""Which pool size and cache policy for this workload on this card? Simulated in seconds.

    python -m eval.sim sweep --workload long-multi-turn --pools 60000,100000,150000 \\
        --unlimited --trace eval/results/traces/h200_b1c14b1_engage_pressure.jsonl.gz --out DIR
    python -m eval.sim validate --engage eval/results/h200_engage.json.gz \\
        --sweep GPU_DIR/sweep.json --workload-trace agents=AGENTS_TRACE \\
        --path-from STAGES.json --pressure PRESSURE.json --pressure-trace ITS_TRACE \\
        --trace TRACE --out eval/results/sim_validation.json
    python -m eval.sim seeds --workload agents --pools 24000,32000 --configs lru,hit-density \\
        --seeds 8 --trace TRACE --out seeds.json

``sweep`` writes ``DIR/sim_sweep.json`` in ``eval.sweep``'s shape (``runs`` of config, pool,
metrics) with its plot, and prints per pool the best configuration and how far it is from the
unlimited pool. ``--trace`` is the AsymCache latency trace of a GPU run on the card to model
(``eval.engage`` writes one per AsymCache server); its step model is fitted here and recorded.
``validate`` simulates each stock-policy run of the GPU results given (engage, sweep, and
``eval.gpu_pressure`` JSONs), each with a trace of its card (and, with ``--workload-trace``, of
its workload) and, with ``--path-from`` (a result with ``ttft_stages``), the trips outside the
scheduler measured on that card, and records TTFT mean and token hit rate beside the measured
ones. ``seeds`` runs the sweep once per workload seed and records each
configuration's TTFT over LRU's, seed by seed, as a geometric mean with its range, and how many
seeds each configuration that is not a stock policy is behind the best stock one. ``calls``
lines up one configuration's calls in a measured run (``eval.bench`` or ``eval.sweep`` JSON) and
a simulated one of the same workload and seed, and prints where their cached tokens part:

    python -m eval.sim calls GPU_DIR/sweep.json DIR/sim_sweep.json --config asymcache --pool 150000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eval.agent_workload import AgentPrograms
from eval.bench import parse_overrides
from eval.common import (
    STOCK_POLICIES,
    is_stock_configuration,
    read_json,
    result_header,
    split_configuration,
)
from eval.mooncake_trace import TraceCut
from eval.sim.engine import (
    CACHES,
    ORACLE,
    SIM_ONLY,
    EngineConfig,
    is_configuration,
    simulate,
)
from eval.sim.scripts import (
    Client,
    RoundRobinClient,
    SessionClient,
    agent_scripts,
    long_multi_turn_scripts,
    mooncake_scripts,
)
from eval.sim.step_model import StepModel, fit_step_model
from eval.sim.summary import compare_calls, summarize
from eval.sweep import UNLIMITED, plot, plot_cdf
from eval.workloads import LongMultiTurn, MultiTurnWorkload

# Larger than any workload here needs: nothing is ever evicted.
UNLIMITED_POOL_TOKENS = 4_000_000
# Per workload: its settings, and a fresh client of them for each run.
SIM_WORKLOADS: dict[str, tuple[type, Callable[[Any], Client]]] = {
    "long-multi-turn": (LongMultiTurn, lambda w: SessionClient(long_multi_turn_scripts(w))),
    "agents": (AgentPrograms, lambda w: SessionClient(agent_scripts(w))),
    "mooncake": (TraceCut, lambda w: SessionClient(mooncake_scripts(w))),
    # eval.gpu_pressure's workload: one request at a time, round robin over the sessions.
    "multi-turn-round-robin": (MultiTurnWorkload, RoundRobinClient),
}
# A session's next call is known to the oracle only where a client schedules it ahead.
ORACLE_WORKLOADS = ("long-multi-turn", "agents")
VALIDATED_METRICS = ("ttft_mean_s", "token_hit_rate")


def workload_settings(name: str, fields: dict[str, Any]) -> Any:
    """Workload ``name``'s settings from ``fields`` (a result's record of them; lists as tuples)."""
    settings_type = SIM_WORKLOADS[name][0]
    known = {f.name for f in dataclasses.fields(settings_type)}
    return settings_type(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}
    )


def serving_path(result: dict[str, Any]) -> dict[str, float]:
    """The trips outside the scheduler as ``eval.bench`` measured them (``ttft_stages``, from a
    server run with ``--enable-metrics``), averaged over the runs of an ``eval.sweep`` result or
    the one of a bench result, as ``EngineConfig`` fields."""
    runs = [r for r in result.get("runs", [result]) if "ttft_stages" in r["metrics"]]
    if not runs:
        raise ValueError("no run with ttft_stages: run the servers with --enable-metrics")
    return {
        field: statistics.fmean(r["metrics"]["ttft_stages"][stage]["mean"] for r in runs)
        for field, stage in (("to_scheduler_s", "to_server"), ("to_client_s", "to_client"))
    }


def simulate_run(
    workload: str,
    settings: Any,
    config: str,
    pool: int | None,
    step: StepModel,
    path: dict[str, float] | None = None,
) -> dict[str, Any]:
    cache, schedule_policy = split_configuration(config)
    engine_config = EngineConfig(
        pool_tokens=UNLIMITED_POOL_TOKENS if pool is None else pool,
        cache=cache,
        schedule_policy=schedule_policy,
        **(path or {}),
    )
    client = SIM_WORKLOADS[workload][1](settings)
    result = simulate(client, engine_config, step)
    jobs = workload == "agents"
    return {
        "config": config,
        "pool": UNLIMITED if pool is None else str(pool),
        "metrics": summarize(result, jobs),
        "steps": result.steps,
        "asymcache": result.counters,
    }


def run_sweep(
    workload: str,
    overrides: Sequence[str],
    configs: Sequence[str],
    pools: Sequence[int | None],
    trace: Path,
) -> dict[str, Any]:
    if workload not in ORACLE_WORKLOADS and any(
        split_configuration(c)[0] == ORACLE for c in configs
    ):
        raise ValueError(f"the oracle needs sessions whose next call is scheduled: {workload}")
    settings_type = SIM_WORKLOADS[workload][0]
    settings = settings_type(**parse_overrides(settings_type, overrides))
    step, fit = fit_step_model(trace)
    start = time.perf_counter()
    runs = [
        simulate_run(workload, settings, config, pool, step)
        for pool, config in tqdm([(p, c) for p in pools for c in configs], desc="sim", unit="run")
    ]
    return {
        **result_header(),
        "card": f"simulated from {trace.name}",
        "workload": workload,
        "workload_settings": {"name": workload, **dataclasses.asdict(settings)},
        "overrides": list(overrides),
        "step_model": {"coefficients": step.coefficients, "fit": fit, "trace": str(trace)},
        "configurations": {c: c for c in configs},
        "wall_s": time.perf_counter() - start,
        "runs": runs,
    }


def seed_sweep(
    workload: str,
    overrides: Sequence[str],
    configs: Sequence[str],
    pools: Sequence[int],
    trace: Path,
    seeds: int,
) -> dict[str, Any]:
    """``run_sweep`` once per workload seed (0 .. seeds - 1): per (configuration, pool) the
    geometric mean over seeds of its mean TTFT (and job time, where measured) over LRU's in the
    same seed, with the range and each seed's ratio, and the means of TTFT and hit rate; for a
    configuration that is not a stock policy, each seed's mean TTFT over the best stock
    configuration's in that seed (``configs`` with SGLang's policies under either schedule
    policy). One seed's realisation of a few sessions moves a policy's ratio by tens of
    percent; a design choice needs several."""
    if "lru" not in configs:
        raise ValueError("seed_sweep compares against lru: include it in configs")
    stock = [c for c in configs if is_stock_configuration(c)]
    by_cell: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for seed in range(seeds):
        sweep = run_sweep(workload, [*overrides, f"seed={seed}"], configs, pools, trace)
        metrics = {(r["config"], r["pool"]): r["metrics"] for r in sweep["runs"]}
        best_stock = {
            pool: min(metrics[(c, pool)]["ttft_mean_s"] for c in stock)
            for pool in {pool for _, pool in metrics}
        }
        for (config, pool), m in metrics.items():
            by_cell.setdefault((config, pool), []).append(
                m | {"lru": metrics[("lru", pool)], "best_stock_ttft_mean_s": best_stock[pool]}
            )
    cells = []
    for (config, pool), runs in by_cell.items():
        cell: dict[str, Any] = {"config": config, "pool": pool, "seeds": len(runs)}
        for metric in ("ttft_mean_s", "ttft_p50_s", "jct_mean_s"):
            if metric not in runs[0]:
                continue
            ratios = [r[metric] / r["lru"][metric] for r in runs]
            name = metric.removesuffix("_s")
            cell[f"{name}_ratio_geomean"] = math.exp(statistics.fmean(map(math.log, ratios)))
            cell[f"{name}_ratio_range"] = [min(ratios), max(ratios)]
            cell[f"{name}_ratios"] = ratios
            cell[metric] = statistics.fmean(r[metric] for r in runs)
        if config not in stock:
            cell["ttft_mean_over_best_stock"] = [
                r["ttft_mean_s"] / r["best_stock_ttft_mean_s"] for r in runs
            ]
        cell["token_hit_rate"] = statistics.fmean(r["token_hit_rate"] for r in runs)
        cells.append(cell)
    return {
        **result_header(),
        "card": f"simulated from {trace.name}",
        "workload": workload,
        "overrides": list(overrides),
        "seeds": seeds,
        "cells": cells,
    }


def advice(sweep: dict[str, Any], metric: str = "ttft_mean_s") -> list[str]:
    """Per pool, the online configuration with the lowest ``metric``, against the oracle's and
    the unlimited pool's."""
    floor = min(
        (r["metrics"][metric] for r in sweep["runs"] if r["pool"] == UNLIMITED), default=None
    )
    lines = []
    for pool in dict.fromkeys(r["pool"] for r in sweep["runs"] if r["pool"] != UNLIMITED):
        runs = {r["config"]: r["metrics"][metric] for r in sweep["runs"] if r["pool"] == pool}
        oracle = runs.pop(ORACLE, None)
        best = min(runs, key=runs.__getitem__)
        line = f"pool {pool}: {best} ({metric} {runs[best]:.3f}"
        if oracle is not None:
            line += f"; oracle {oracle:.3f}"
        if floor:
            line += f"; unlimited pool {floor:.3f}"
        lines.append(line + ")")
    return lines


@dataclass(frozen=True)
class GpuPoint:
    """A stock-policy run measured on a GPU, and the latency trace of that card."""

    source: str
    card: str
    workload: str
    settings: dict[str, Any]
    pool: int
    config: str
    trace: Path
    measured: dict[str, Any]


def gpu_points(
    engage: Path | None,
    sweeps: Sequence[Path],
    trace: Path,
    pressure: Path | None = None,
    pressure_trace: Path | None = None,
    workload_traces: dict[str, Path] | None = None,
) -> list[GpuPoint]:
    """The stock-policy runs of the GPU results given (``trace`` models the card of the engage
    and sweep results, ``workload_traces`` where given that of a sweep's workload, and
    ``pressure_trace`` that of the pressure result)."""
    workload_traces = workload_traces or {}
    points = []
    if engage is not None:
        merged = read_json(engage)
        parts = merged["parts"]
        for part, runs in (
            ("pressure", parts["pressure"]["runs"]),
            ("no_pressure", parts["no_pressure"]["cuda_graph_default"]["runs"]),
        ):
            points.append(
                GpuPoint(
                    f"{engage.name}: {part}, stock",
                    merged["card"],
                    "long-multi-turn",
                    parts[part]["workload"],
                    parts[part]["pool_tokens"],
                    "lru",
                    trace,
                    runs["stock"],
                )  # fmt: skip
            )
    for path in sweeps:
        result = read_json(path)
        # One eval.sweep run, or eval.sweep merge's file of every workload.
        for sweep in result["workloads"].values() if "workloads" in result else [result]:
            points += sweep_points(path, sweep, workload_traces.get(sweep["workload"], trace))
    if pressure is not None:
        result = read_json(pressure)
        args = result["server_args"]
        pool = int(args[args.index("--max-total-tokens") + 1])
        points += [
            GpuPoint(
                f"{pressure.name}: {config}",
                result["card"],
                "multi-turn-round-robin",
                result["workload"],
                pool,
                config,
                pressure_trace or trace,
                result["runs"][config],
            )  # fmt: skip
            for config in STOCK_POLICIES
            if config in result["runs"]
        ]
    return points


def sweep_points(path: Path, sweep: dict[str, Any], trace: Path) -> list[GpuPoint]:
    """The bounded-pool runs of SGLang's own policies in one workload's sweep."""
    return [
        GpuPoint(
            f"{path.name}: {sweep['workload']}, {run['config']} at {run['pool']}",
            sweep["card"],
            sweep["workload"],
            run["workload"],
            int(run["pool"]),
            run["config"],
            trace,
            run["metrics"],
        )  # fmt: skip
        for run in sweep["runs"]
        if run["config"] in STOCK_POLICIES and run["pool"] != UNLIMITED
    ]


def validate(
    points: list[GpuPoint], paths: dict[str, dict[str, float]] | None = None
) -> dict[str, Any]:
    """The simulated run beside each measured point, each with its card's step model and, where
    ``paths`` has its card, the trips outside the scheduler measured there; the worst relative
    error."""
    paths = paths or {}
    models = {str(p.trace): fit_step_model(p.trace) for p in points}
    rows = []
    for point in points:
        step = models[str(point.trace)][0]
        settings = workload_settings(point.workload, point.settings)
        path = paths.get(point.card)
        run = simulate_run(point.workload, settings, point.config, point.pool, step, path)
        errors = {m: abs(run["metrics"][m] / point.measured[m] - 1.0) for m in VALIDATED_METRICS}
        rows.append(
            {
                "source": point.source,
                "card": point.card,
                "workload": point.workload,
                "pool": point.pool,
                "config": point.config,
                "trace": str(point.trace),
                "serving_path": path,
                "measured": {m: point.measured[m] for m in VALIDATED_METRICS},
                "simulated": {m: run["metrics"][m] for m in VALIDATED_METRICS},
                "rel_err": errors,
            }
        )
    return {
        **result_header(),
        "step_models": {
            trace: {"coefficients": model.coefficients, "fit": fit}
            for trace, (model, fit) in models.items()
        },
        "points": rows,
        "max_rel_err": max(e for row in rows for e in row["rel_err"].values()),
    }


def run_calls(
    result: dict[str, Any], config: str, pool: str, seed: int | None = None
) -> list[list[float]]:
    """The ``calls`` rows of ``result``'s run of ``config`` at ``pool`` (a sweep, or one run),
    of workload ``seed`` where the sweep ran several."""
    for run in result.get("runs", [result]):
        if (
            run.get("config") == config
            and str(run.get("pool")) == pool
            and (seed is None or run.get("seed", run.get("workload", {}).get("seed")) == seed)
            and "calls" in run["metrics"]
        ):
            return run["metrics"]["calls"]
    raise ValueError(f"no run of {config} at pool {pool} (seed {seed}) with per-call rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep")
    sweep.add_argument("--workload", required=True, choices=sorted(SIM_WORKLOADS))
    sweep.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    sweep.add_argument("--configs", default=",".join((*CACHES, *SIM_ONLY)))
    sweep.add_argument("--pools", required=True, help="comma-separated --max-total-tokens")
    sweep.add_argument("--unlimited", action="store_true", help="also the unbounded pool")
    sweep.add_argument("--trace", type=Path, required=True)
    sweep.add_argument("--out", type=Path, required=True)
    several = sub.add_parser("seeds", help="a sweep over workload seeds, ratios to LRU")
    several.add_argument("--workload", required=True, choices=sorted(SIM_WORKLOADS))
    several.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    several.add_argument("--configs", default=",".join((*CACHES, *SIM_ONLY)))
    several.add_argument("--pools", required=True, help="comma-separated --max-total-tokens")
    several.add_argument("--seeds", type=int, default=8)
    several.add_argument("--trace", type=Path, required=True)
    several.add_argument("--out", type=Path, required=True, help="a JSON file")
    check = sub.add_parser("validate")
    check.add_argument("--engage", type=Path, help="an eval.engage result (long multi-turn)")
    check.add_argument("--sweep", type=Path, action="append", default=[], help="eval.sweep JSON")
    check.add_argument(
        "--pressure", type=Path, help="an eval.gpu_pressure result (round-robin multi-turn)"
    )
    check.add_argument("--pressure-trace", type=Path, help="a latency trace from its card")
    check.add_argument(
        "--workload-trace",
        action="append",
        default=[],
        metavar="WORKLOAD=TRACE",
        help="a latency trace recorded on that workload, for its sweep runs (else --trace)",
    )
    check.add_argument(
        "--path-from",
        type=Path,
        action="append",
        default=[],
        help="an eval.bench result with ttft_stages: its card's trips outside the scheduler",
    )
    check.add_argument("--trace", type=Path, required=True)
    check.add_argument("--out", type=Path, required=True)
    calls = sub.add_parser("calls", help="a measured and a simulated run, call by call")
    calls.add_argument("measured", type=Path)
    calls.add_argument("simulated", type=Path)
    calls.add_argument("--config", default="asymcache")
    calls.add_argument("--pool", required=True)
    calls.add_argument(
        "--seed", type=int, help="the measured run of this seed (eval.sweep --seeds)"
    )
    args = parser.parse_args()
    if args.command == "calls":
        try:
            rows = [
                run_calls(read_json(args.measured), args.config, args.pool, args.seed),
                run_calls(read_json(args.simulated), args.config, args.pool),
            ]
        except ValueError as exc:
            parser.error(str(exc))
        print(json.dumps(compare_calls(*rows), indent=1))
        return
    if args.command == "validate":
        pairs = [pair.partition("=") for pair in args.workload_trace]
        if any(not sep or name not in SIM_WORKLOADS for name, sep, _ in pairs):
            parser.error(
                f"--workload-trace takes WORKLOAD=TRACE, WORKLOAD one of {sorted(SIM_WORKLOADS)}"
            )
        traces = {name: path for name, _, path in pairs}
        points = gpu_points(
            args.engage, args.sweep, args.trace, args.pressure, args.pressure_trace,
            {name: Path(path) for name, path in traces.items()},
        )  # fmt: skip
        try:
            results = [read_json(p) for p in args.path_from]
            paths = {r["card"]: serving_path(r) for r in results}
        except ValueError as exc:
            parser.error(str(exc))
        result = validate(points, paths)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["points"], indent=2), f"\nmax_rel_err {result['max_rel_err']:.3f}")
        return
    configs = args.configs.split(",")
    unknown = [c for c in configs if not is_configuration(c)]
    if unknown:
        parser.error(
            f"unknown configurations {unknown}; known: {[*CACHES, *SIM_ONLY]}, each also as "
            "<configuration>+lpm (SGLang's --schedule-policy lpm)"
        )
    if args.command == "seeds":
        try:
            result = seed_sweep(
                args.workload, args.set, configs, [int(p) for p in args.pools.split(",")],
                args.trace, args.seeds,
            )  # fmt: skip
        except ValueError as exc:
            parser.error(str(exc))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        for cell in result["cells"]:
            low, high = cell["ttft_mean_ratio_range"]
            ratio = cell["ttft_mean_ratio_geomean"]
            line = (
                f"{cell['pool']:>8} {cell['config']:<20} TTFT x{ratio:.3f}"
                f" LRU's ({low:.2f}-{high:.2f}), {cell['ttft_mean_s']:.3f} s,"
                f" hit rate {cell['token_hit_rate']:.1%}"
            )
            over = cell.get("ttft_mean_over_best_stock")
            if over:
                behind = sum(x > 1 for x in over)
                line += f"; behind the best stock on {behind} of {len(over)} seeds"
                line += f" (worst x{max(over):.3f})" if behind else ""
            print(line)
        return
    pools: list[int | None] = [int(p) for p in args.pools.split(",")]
    if args.unlimited:
        pools.append(None)
    try:
        result = run_sweep(args.workload, args.set, configs, pools, args.trace)
    except ValueError as exc:
        parser.error(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sim_sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "sim_sweep.png")
    plot_cdf(result, args.out / "sim_sweep_cdf.png")
    print("\n".join(advice(result)), f"\n({result['wall_s']:.1f} s simulated wall time)")


if __name__ == "__main__":
    main()
