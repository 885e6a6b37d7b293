"""A simulated run's metrics, named as ``eval.bench`` names the measured ones."""

from __future__ import annotations

from typing import Any

from eval.common import CALL_FIELDS, call_row, seconds_fields, summarize_stages
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
        # eval.bench's CALL_FIELDS rows: the calls of a measured run line up with these.
        "calls": sorted(
            call_row(
                r.session,
                r.call,
                r.prompt_tokens,
                r.prompt_tokens - min(r.computed_prompt_tokens, r.prompt_tokens),
                r.ttft_s,
            )
            for r in records
        ),
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


def compare_calls(
    measured: list[list[float]], simulated: list[list[float]], min_tokens: int = 256
) -> dict[str, Any]:
    """Two runs' ``CALL_FIELDS`` rows lined up by (session, turn): totals, and the calls whose
    cached tokens differ by ``min_tokens`` or more, in (session, turn) order."""
    sim = {(row[0], row[1]): row for row in simulated}
    cached, ttft = CALL_FIELDS.index("cached_tokens"), CALL_FIELDS.index("ttft_s")
    pairs = [(row, sim[row[0], row[1]]) for row in measured if (row[0], row[1]) in sim]
    differ = [
        {"session": m[0], "turn": m[1], "prompt_tokens": m[2], "cached": [m[cached], s[cached]],
         "ttft_s": [m[ttft], s[ttft]]}
        for m, s in pairs
        if abs(m[cached] - s[cached]) >= min_tokens
    ]  # fmt: skip
    return {
        "calls": len(pairs),
        "unmatched": len(measured) + len(simulated) - 2 * len(pairs),
        "cached_tokens": [sum(m[cached] for m, _ in pairs), sum(s[cached] for _, s in pairs)],
        "ttft_sum_s": [sum(m[ttft] for m, _ in pairs), sum(s[ttft] for _, s in pairs)],
        "differ": differ,
    }
