"""What the eval harnesses share: result header, server health and state, one percentile rule."""

from __future__ import annotations

import datetime
import gzip
import io
import json
import math
import os
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import requests
from PIL import Image

from eval.server import REPO_ROOT, SGLangServer
from eval.workloads import TurnResult, inter_token_gaps_s, tpot_s

# Server-log lines that mean a run went wrong even when every request was answered.
LEAK_MARKERS = ("memory leak detected", "Traceback", "KV double free", "use-after-free")
SUMMARY_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
# SGLang 0.5.16's --radix-eviction-policy values.
STOCK_POLICIES = ("lru", "lfu", "slru", "priority")


def split_configuration(name: str) -> tuple[str, str]:
    """A configuration ``<cache>[+<schedule policy>]`` (``lru+lpm``: LRU under SGLang's
    ``--schedule-policy lpm``) as (cache, schedule policy)."""
    cache, _, policy = name.partition("+")
    return cache, policy or "fcfs"


def is_stock_configuration(name: str) -> bool:
    """Whether ``name`` is SGLang's own cache: a stock eviction policy, any schedule policy."""
    return split_configuration(name)[0] in STOCK_POLICIES


# ----- where the numbers come from -----


def card() -> str:
    """The GPU these numbers come from ("cpu" for dry runs)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def git_commit() -> str:
    """The commit measured: ``ASYMCACHE_COMMIT`` (hosts without the git folder), else HEAD."""
    env_commit = os.environ.get("ASYMCACHE_COMMIT")
    if env_commit:
        return env_commit
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "unknown"


def result_header() -> dict[str, str]:
    """Card, commit and UTC time (ISO 8601, seconds) that open every result JSON."""
    return {
        "card": card(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def open_text(path: Path, mode: str = "rt") -> IO[str]:
    """``path`` as text, through gzip where its name ends in ``.gz``."""
    return gzip.open(path, mode) if path.suffix == ".gz" else path.open(mode)


def read_json(path: Path) -> Any:
    """A result JSON, gzipped where its name ends in ``.gz``."""
    with open_text(path) as f:
        return json.load(f)


def write_compact_json(path: Path, body: Any) -> None:
    """``body`` without spaces (a tracked result), gzipped where ``path`` ends in ``.gz``."""
    text = json.dumps(body, separators=(",", ":")) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)


def result_stem(path: Path) -> str:
    """``path``'s name less ``.json`` and ``.gz``: what files written beside it start with."""
    return path.name.removesuffix(".gz").removesuffix(".json")


# ----- plots -----


def save_figure(fig: Any, path: Any, dpi: int = 80) -> None:
    """A matplotlib figure as a 64-colour PNG: a quarter of the bytes, and plots are tracked."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(64, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)


# ----- one percentile rule -----


def _nearest_rank(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest rank, q in [0, 1]: the smallest value with at least a fraction q of values <= it."""
    return _nearest_rank(sorted(values), q)


def summary_stats(values: Iterable[float]) -> dict[str, float]:
    """count, max, mean and nearest-rank p50/p90/p99 of values (ValueError if there are none)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("summary_stats of no values")
    return {
        "count": len(ordered),
        "max": ordered[-1],
        "mean": statistics.mean(ordered),
        **{name: _nearest_rank(ordered, q) for name, q in SUMMARY_QUANTILES.items()},
    }


def seconds_fields(name: str, values: Iterable[float]) -> dict[str, float]:
    """``<name>_mean_s`` and ``<name>_p50_s`` / ``_p90_s`` / ``_p99_s`` of values in seconds."""
    stats = summary_stats(values)
    return {f"{name}_{key}_s": stats[key] for key in ("mean", *SUMMARY_QUANTILES)}


def summarize_turns(results: Sequence[TurnResult]) -> dict[str, float]:
    """One run's request count, TTFT distribution and prompt-token hit rate."""
    prompt = sum(len(r.input_ids) for r in results)
    cached = sum(r.cached_tokens for r in results)
    return {
        "requests": len(results),
        **seconds_fields("ttft", (r.ttft_s for r in results)),
        "latency_mean_s": statistics.mean(r.latency_s for r in results),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "computed_prompt_tokens": prompt - cached,
        "token_hit_rate": cached / prompt,
        # For CDFs, in microseconds' precision.
        "ttft_samples_s": sorted(round(r.ttft_s, 6) for r in results),
    }


def summarize_requests(results: Sequence[TurnResult]) -> dict[str, float]:
    """``summarize_turns`` with TPOT's mean and percentiles over the requests that decoded more
    than one token, and the inter-token gaps' (none: no TPOT or ITL fields)."""
    tpots = [t for t in map(tpot_s, results) if t is not None]
    gaps = [g for r in results for g in inter_token_gaps_s(r)]
    stages = [r.meta["ttft_stages"] for r in results if "ttft_stages" in r.meta]
    return {
        **summarize_turns(results),
        **(seconds_fields("tpot", tpots) if tpots else {}),
        **(seconds_fields("itl", gaps) if gaps else {}),
        **({"ttft_stages": summarize_stages(stages)} if len(stages) == len(results) else {}),
    }


# A row of ``call_rows``: what a per-call comparison of two runs of one workload lines up.
CALL_FIELDS = ("session", "turn", "prompt_tokens", "cached_tokens", "ttft_s")


def call_row(
    session: int, turn: int, prompt_tokens: int, cached_tokens: int, ttft_s: float
) -> list[float]:
    """A ``CALL_FIELDS`` row, TTFT to the microsecond."""
    return [session, turn, prompt_tokens, cached_tokens, round(ttft_s, 6)]


def call_rows(results: Sequence[TurnResult]) -> list[list[float]]:
    """One ``CALL_FIELDS`` row per request, in (session, turn) order."""
    return sorted(
        call_row(r.session, r.turn, len(r.input_ids), r.cached_tokens, r.ttft_s) for r in results
    )


def summarize_stages(stages: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and percentiles of each TTFT stage (``eval.workloads.ttft_stages``) over requests."""
    return {
        name: {key: stats[key] for key in ("mean", *SUMMARY_QUANTILES)}
        for name in stages[0]
        for stats in [summary_stats(s[name] for s in stages)]
    }


# ----- the server's health and state -----


def server_health(server: SGLangServer) -> dict[str, Any]:
    """Idle the scheduler so SGLang's strict idle memory check runs, then look for trouble."""
    time.sleep(3)
    healthy = requests.get(f"{server.url}/health_generate", timeout=120).status_code == 200
    log = server.log_path.read_text(errors="replace")
    return {
        "healthy_after_idle": healthy,
        "leak_or_error_lines": sum(log.count(m) for m in LEAK_MARKERS),
    }


def flush_cache(url: str) -> None:
    """Empty the server's prefix cache (SGLang's /flush_cache: refused while requests run)."""
    requests.post(f"{url}/flush_cache?timeout=30", timeout=60).raise_for_status()


def asymcache_state(url: str, key: str) -> dict:
    """One AsymCache entry of /get_server_info's scheduler state (empty without AsymCache)."""
    info = requests.get(f"{url}/get_server_info", timeout=60).json()
    return info["internal_states"][0].get(key, {})


def asymcache_counters(url: str) -> dict:
    """AsymCache's counters from /get_server_info (empty for a server without AsymCache)."""
    return asymcache_state(url, "asymcache")


# Counters that are a state, not a running total: a run reports them as at its end.
GAUGE_COUNTERS = frozenset(
    {"resident_tokens", "hole_tokens", "programs_in", "programs_waiting", "return_gaps",
     "longest_plan_chunks", "evicted_nodes_digest", "plans_digest", "chunks_digest"}
)  # fmt: skip


def counters_since(before: dict, after: dict) -> dict:
    """AsymCache's counters over a run: totals as the difference, gauges as at the end.

    A flush replaces the tree (its counters restart) but not the plan and chunk totals, so runs
    on one server (``eval.sweep --seeds``) each take ``before`` after their flush.
    """
    return {k: v if k in GAUGE_COUNTERS else v - before.get(k, 0) for k, v in after.items()}


def prometheus_total(url: str, name: str) -> float:
    """The sum of metric ``name``'s samples on the server's /metrics (over its labels)."""
    text = requests.get(f"{url}/metrics", timeout=60)
    text.raise_for_status()
    samples = [
        float(line.rsplit(" ", 1)[1])
        for line in text.text.splitlines()
        if line.startswith((f"{name}{{", f"{name} "))
    ]
    if not samples:
        raise ValueError(f"{url}/metrics has no {name}: start the server with --enable-metrics")
    return sum(samples)


def asymcache_latency(url: str) -> dict:
    """The latency model's state and last chunk decision (empty without AsymCache)."""
    return asymcache_state(url, "asymcache_latency")
