"""Adaptive prefill chunk size from a step-latency model.

With decodes running, the chunk is the largest one whose mixed step stays within the TPOT budget
(Sarathi-style stall-free batching, with the budget in seconds rather than tokens). Without them,
it is the knee of the predicted prefill throughput: past it, bigger chunks buy little throughput
and only delay the next scheduling decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from asymcache_sglang.core.latency_fit import BatchFeatures

DEFAULT_MIN_CHUNK = 64


@dataclass(frozen=True)
class ChunkDecision:
    """The chosen chunk, why, and the predicted time of the step that would run it."""

    chunk: int
    reason: str
    predicted_s: float


def pick_chunk(
    predict: Callable[[BatchFeatures], float],
    *,
    prefix_len: int,
    decode_seq_lens: Sequence[int],
    max_chunk: int,
    page_size: int = 1,
    min_chunk: int | None = None,
    tpot_budget_s: float | None,
    knee_gain: float = 0.05,
) -> ChunkDecision:
    """Prefill chunk for the next request, a multiple of page_size in [min_chunk, max_chunk].

    ``predict`` must be non-decreasing in the chunk (true for OnlineLatencyModel.predict: its
    coefficients are non-negative), which the budget's binary search relies on. ``max_chunk`` is
    the launch-time --chunked-prefill-size (rounded down to a page); ``min_chunk`` defaults to
    max(page_size, 64) rounded up to a page, capped at max_chunk.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    if max_chunk < page_size:
        raise ValueError(f"max_chunk must be >= page_size ({page_size}), got {max_chunk}")
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    if min_chunk is not None and not 1 <= min_chunk <= max_chunk:
        raise ValueError(f"min_chunk must be in [1, max_chunk={max_chunk}], got {min_chunk}")
    if tpot_budget_s is not None and not tpot_budget_s > 0:
        raise ValueError(f"tpot_budget_s must be > 0 or None, got {tpot_budget_s}")
    if not knee_gain > 0:
        raise ValueError(f"knee_gain must be > 0, got {knee_gain}")

    hi = max_chunk // page_size * page_size
    wanted_min = max(page_size, DEFAULT_MIN_CHUNK) if min_chunk is None else min_chunk
    lo = min(-(-wanted_min // page_size) * page_size, hi)

    decodes = BatchFeatures.from_segments([], decode_seq_lens)  # summed once, not per candidate

    def step_s(chunk: int) -> float:
        prefill = BatchFeatures.from_segments([(prefix_len, prefix_len + chunk)], [])
        return predict(replace(decodes, new_tokens=prefill.new_tokens, new_ctx=prefill.new_ctx))

    if decode_seq_lens and tpot_budget_s is not None:
        return _within_budget(step_s, lo, hi, page_size, tpot_budget_s)
    return _knee(step_s, lo, hi, knee_gain)


def _within_budget(
    step_s: Callable[[int], float], lo: int, hi: int, page_size: int, budget_s: float
) -> ChunkDecision:
    """Largest page-aligned chunk whose predicted step fits the budget (binary search)."""
    lo_s = step_s(lo)
    if lo_s > budget_s:
        return ChunkDecision(lo, "min_chunk: even the smallest chunk exceeds the TPOT budget", lo_s)
    hi_s = step_s(hi)
    if hi_s <= budget_s:
        return ChunkDecision(hi, "max_chunk: the largest chunk fits the TPOT budget", hi_s)
    # Invariant: page `good` fits, page `bad` does not.
    good, bad, good_s = lo // page_size, hi // page_size, lo_s
    while bad - good > 1:
        mid = (good + bad) // 2
        mid_s = step_s(mid * page_size)
        if mid_s <= budget_s:
            good, good_s = mid, mid_s
        else:
            bad = mid
    return ChunkDecision(good * page_size, "largest chunk within the TPOT budget", good_s)


def _knee(step_s: Callable[[int], float], lo: int, hi: int, knee_gain: float) -> ChunkDecision:
    """First chunk (lo, 2 lo, 4 lo, ..., hi) where the next one raises throughput < knee_gain."""
    candidates = [lo]
    while candidates[-1] * 2 < hi:
        candidates.append(candidates[-1] * 2)  # doubling keeps page alignment
    if candidates[-1] != hi:
        candidates.append(hi)
    chunk, chunk_s = candidates[0], step_s(candidates[0])
    for nxt in candidates[1:]:
        nxt_s = step_s(nxt)
        if chunk_s <= 0 or nxt_s <= 0:
            # An untrained model predicts no cost: there is nothing to trade off.
            return ChunkDecision(hi, "max_chunk: the model predicts no cost", step_s(hi))
        gain = (nxt / nxt_s) / (chunk / chunk_s) - 1.0
        if gain < knee_gain:
            return ChunkDecision(chunk, f"throughput knee: next size gains {gain:.1%}", chunk_s)
        chunk, chunk_s = nxt, nxt_s
    return ChunkDecision(chunk, "max_chunk: throughput still rising", chunk_s)
