"""A simulated run's metrics, named as ``eval.bench`` names the measured ones."""

from __future__ import annotations

from typing import Any

from eval.common import seconds_fields, summarize_stages
from eval.sim.engine import SimResult


def summarize(result: SimResult, jobs: bool) -> dict[str, Any]:
    """TTFT, TPOT, ITL, hit rate and prefill throughput over every call; with ``jobs``, each
    session's completion time (first arrival to last answer), as ``eval.agent_workload.
    summarize_jobs`` reports it."""
    records = result.records
    prompt = sum(r.prompt_tokens for r in records)
    computed = sum(min(r.computed_prompt_tokens, r.prompt_tokens) for r in records)
    tpots = [t for t in (r.tpot_s for r in records) if t is not None]
    gaps = [b - a for r in records for a, b in zip(r.token_times_s, r.token_times_s[1:])]
    duration_s = max(r.finish_s for r in records) - min(r.arrival_s for r in records)
    out: dict[str, Any] = {
        "requests": len(records),
        **seconds_fields("ttft", (r.ttft_s for r in records)),
        "prompt_tokens": prompt,
        "cached_tokens": prompt - computed,
        "computed_prompt_tokens": computed,
        "token_hit_rate": (prompt - computed) / prompt,
        "ttft_samples_s": sorted(round(r.ttft_s, 6) for r in records),
        **(seconds_fields("tpot", tpots) if tpots else {}),
        **(seconds_fields("itl", gaps) if gaps else {}),
        "duration_s": duration_s,
        "computed_prompt_tokens_per_s": computed / duration_s,
        # eval.workloads.ttft_stages as the simulator has them (its queued is to_queue + queued).
        "ttft_stages": summarize_stages(
            [
                {
                    "to_server": r.reached_s - r.arrival_s,
                    "queued": r.admitted_s - r.reached_s,
                    "prefill": r.prefilled_s - r.admitted_s,
                    "to_client": r.first_token_s - r.prefilled_s,
                }
                for r in records
            ]
        ),
    }
    if jobs:
        sessions: dict[int, list[float]] = {}
        for r in records:
            span = sessions.setdefault(r.session, [r.arrival_s, r.finish_s])
            span[0], span[1] = min(span[0], r.arrival_s), max(span[1], r.finish_s)
        out["jobs"] = len(sessions)
        out |= seconds_fields("jct", (end - start for start, end in sessions.values()))
    return out
