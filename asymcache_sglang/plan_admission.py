"""How a hole plan is shown to SGLang 0.5.16's PrefillAdder (``handoff`` steps 2 and 2b).

The request gets a composite prefix of length M, the end of its last retained range, so SGLang
budgets and chunks the tail [M, L) as it would any extend, while the hole tokens are charged to
the same budgets here. A plan whose holes and tail exceed the pass's chunk keeps the holes that
fit (``SegmentPlan.fit``); the chunk SGLang then cuts from the tail starts with the first hole
left out, and later chunks re-match and carry on from what this one recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from asymcache_sglang import handoff
from asymcache_sglang.core.tree import SegmentPlan
from asymcache_sglang.radix_cache import HoleAwareRadixCache

T = TypeVar("T")


def fit_to_chunk(
    cache: HoleAwareRadixCache, plan: SegmentPlan, tail_tokens: int, chunk_tokens: int | None
) -> SegmentPlan | None:
    """``plan``, or its leading part that leaves at least one chunk token for the tail.

    None when not even the first hole fits: the contiguous extend then starts with that hole.
    """
    if chunk_tokens is None or plan.recompute_tokens + tail_tokens <= chunk_tokens:
        return plan
    fitted = plan.fit(chunk_tokens - 1)
    if fitted is None:
        # The same work as the plan's first chunk: that hole, from its start, as a plain extend.
        cache.counters.chunk_fallbacks += 1
    return fitted


def charge(adder: Any, tokens: int) -> None:
    """Count ``tokens`` of extend against every PrefillAdder budget (negative: give back)."""
    adder.rem_total_token_offset += tokens
    adder.cur_rem_token_offset += tokens
    adder.rem_input_tokens -= tokens
    if adder.rem_chunk_tokens is not None:
        adder.rem_chunk_tokens -= tokens


def run_with_plan(
    cache: HoleAwareRadixCache,
    adder: Any,
    req: Any,
    plan: SegmentPlan,
    add: Callable[[], T],
    *,
    logs_prefix_as_hits: bool,
) -> tuple[T, bool]:
    """Run SGLang's ``add`` with the plan's composite prefix; whether it admitted the request.

    If it did, the plan is the request's ``admitted`` plan; if not, the request is as before.
    ``logs_prefix_as_hits``: ``add`` logs the prefix as cache hits (add_one_req does).
    """
    contiguous = (req.prefix_indices, req.last_node)
    req.prefix_indices = cache.composite_prefix(plan)
    req.last_node = plan.last_node
    hole_tokens = plan.recompute_tokens
    charge(adder, hole_tokens)
    admitted_before = len(adder.can_run_list)
    result = add()
    admitted = len(adder.can_run_list) > admitted_before and adder.can_run_list[-1] is req
    if admitted:
        # The holes in the composite prefix are computed, not hits.
        if logs_prefix_as_hits:
            adder.log_hit_tokens -= hole_tokens
        adder.log_input_tokens += hole_tokens
        handoff.request_plan(req).admitted = plan
        count_plan_chunk(cache, req)
    else:
        charge(adder, -hole_tokens)
        req.prefix_indices, req.last_node = contiguous
    return result, admitted


def count_plan_chunk(cache: HoleAwareRadixCache, req: Any) -> None:
    """One more prefill chunk of ``req`` recomputes part of its hole plan."""
    request = handoff.request_plan(req)
    request.plan_chunks += 1
    cache.counters.longest_plan_chunks = max(
        cache.counters.longest_plan_chunks, request.plan_chunks
    )
