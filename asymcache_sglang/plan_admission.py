"""How a hole plan is shown to SGLang 0.5.16's PrefillAdder (``handoff`` steps 2 and 2b).

The request gets a composite prefix of length M, the end of its last retained range, so SGLang
budgets and chunks the tail [M, L) as it would any extend, while the hole tokens are charged to
the same budgets here. A plan whose holes and tail exceed the pass's chunk keeps the holes that
fit (``SegmentPlan.fit``); the chunk SGLang then cuts from the tail starts with the first hole
left out, and later chunks re-match and carry on from what this one recomputed. The request's
lock is on the whole plan's last node, so the retained ranges a later chunk reaches stay resident.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from asymcache_sglang import handoff
from asymcache_sglang.core.tree import SegmentPlan
from asymcache_sglang.radix_cache import HoleAwareRadixCache

T = TypeVar("T")


def admit(
    cache: HoleAwareRadixCache,
    adder: Any,
    req: Any,
    plan: SegmentPlan,
    add: Callable[[], T],
    *,
    chunk_tokens: int | None,
    logs_prefix_as_hits: bool,
    budgets_whole_request: bool,
) -> T:
    """Run SGLang's ``add`` for ``req`` with ``plan`` cut to ``chunk_tokens``; its result.

    If SGLang admits the request, the plan is its ``admitted`` plan; if not, it is as before.
    ``logs_prefix_as_hits``: ``add`` logs the prefix as cache hits; ``budgets_whole_request``:
    it checks the whole rest of the prompt against the token budget (add_one_req does both).
    """
    tail_tokens = len(req.full_untruncated_fill_ids) - plan.prefix_len
    # The whole plan's last node carries the request's lock: retained ranges that only a later
    # chunk reaches stay resident until it does.
    locked_node, plan_end = plan.last_node, plan.prefix_len
    # The retained tokens that lock holds; those past the prefix SGLang is shown (all but the
    # contiguous prefix, or those after a cut) are inside the rest of the prompt it budgets.
    held = plan.retained_tokens if budgets_whole_request else 0
    if chunk_tokens is not None and plan.recompute_tokens + tail_tokens > chunk_tokens:
        # A page of the chunk is left for the tail: SGLang cuts chunks at whole pages.
        fitted = plan.fit(chunk_tokens - cache.page_size)
        if fitted is None:
            with _locked_beyond_prefix(adder, max(0, held - plan.contiguous_len)):
                return _inside_first_hole(cache, adder, req, locked_node, plan_end, add)
        plan = fitted
    with _locked_beyond_prefix(adder, max(0, held - plan.retained_tokens)):
        return _admit_plan(cache, adder, req, plan, locked_node, plan_end, add, logs_prefix_as_hits)


@contextmanager
def _locked_beyond_prefix(adder: Any, tokens: int) -> Iterator[None]:
    """While SGLang decides: ``tokens`` retained after the prefix it is shown are locked, so
    already out of its evictable budget, and also inside the extend it checks against that
    budget. Counted once, or a plan that fits the pool would be turned away for want of room."""
    adder.rem_total_token_offset -= tokens
    adder.cur_rem_token_offset -= tokens
    try:
        yield
    finally:
        adder.rem_total_token_offset += tokens
        adder.cur_rem_token_offset += tokens


def _admit_plan(
    cache: HoleAwareRadixCache,
    adder: Any,
    req: Any,
    plan: SegmentPlan,
    locked_node: Any,
    plan_end: int,
    add: Callable[[], T],
    logs_prefix_as_hits: bool,
) -> T:
    """SGLang's ``add`` for ``req`` with ``plan``'s composite prefix, holes charged."""
    contiguous = (req.prefix_indices, req.last_node)
    req.prefix_indices = cache.composite_prefix(plan)
    req.last_node = locked_node
    hole_tokens = plan.recompute_tokens
    _charge(adder, hole_tokens)
    admitted_before = len(adder.can_run_list)
    result = add()
    if _admitted(adder, req, admitted_before):
        # The holes in the composite prefix are computed, not hits.
        if logs_prefix_as_hits:
            adder.log_hit_tokens -= hole_tokens
        adder.log_input_tokens += hole_tokens
        handoff.request_plan(req).admitted = plan
        _count_plan_chunk(cache, req, plan_end)
        cache.counters.chunked_plans += req.extend_range.end < len(req.full_untruncated_fill_ids)
    else:
        _charge(adder, -hole_tokens)
        req.prefix_indices, req.last_node = contiguous
    return result


def _inside_first_hole(
    cache: HoleAwareRadixCache,
    adder: Any,
    req: Any,
    locked_node: Any,
    plan_end: int,
    add: Callable[[], T],
) -> T:
    """A chunk that lies inside the plan's first hole: SGLang's ``add`` on the contiguous prefix
    (the same work as the plan's first chunk: that hole, from its start, as an extend), with the
    lock on ``locked_node``, the plan's last, so the plan resumes in the next chunk. Counted in
    ``first_hole_chunks`` and, if admitted, as a plan chunk."""
    cache.counters.first_hole_chunks += 1
    contiguous_node, req.last_node = req.last_node, locked_node
    admitted_before = len(adder.can_run_list)
    result = add()
    if _admitted(adder, req, admitted_before):
        _count_plan_chunk(cache, req, plan_end)
    else:
        req.last_node = contiguous_node
    return result


def _admitted(adder: Any, req: Any, admitted_before: int) -> bool:
    return len(adder.can_run_list) > admitted_before and adder.can_run_list[-1] is req


def _charge(adder: Any, tokens: int) -> None:
    """Count ``tokens`` of extend against every PrefillAdder budget (negative: give back)."""
    adder.rem_total_token_offset += tokens
    adder.cur_rem_token_offset += tokens
    adder.rem_input_tokens -= tokens
    if adder.rem_chunk_tokens is not None:
        adder.rem_chunk_tokens -= tokens


def _count_plan_chunk(cache: HoleAwareRadixCache, req: Any, plan_end: int) -> None:
    """One more prefill chunk of ``req`` recomputes part of its hole plan, which ends at
    ``plan_end``."""
    request = handoff.request_plan(req)
    request.plan_chunks += 1
    request.plan_end = plan_end
    cache.counters.longest_plan_chunks = max(
        cache.counters.longest_plan_chunks, request.plan_chunks
    )
