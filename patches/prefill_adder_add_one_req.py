"""AROUND ``sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req`` (SGLang 0.5.16).

Budgets a request with holes as holes plus tail. The request is shown to SGLang with a composite
prefix of length M (the end of its last retained segment) while the hole tokens are charged to
the same budgets. A plan that would need chunking falls back to the contiguous prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff

TARGET = "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req"
HOOK_TYPE = HookType.AROUND


def _charge(adder: Any, tokens: int) -> None:
    adder.rem_total_token_offset += tokens
    adder.cur_rem_token_offset += tokens
    adder.rem_input_tokens -= tokens
    if adder.rem_chunk_tokens is not None:
        adder.rem_chunk_tokens -= tokens


def hook(original: Callable[..., Any], adder: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    cache = handoff.enabled_cache(adder.tree_cache)
    if cache is None:
        return original(adder, req, *args, **kwargs)
    request = handoff.request_plan(req)
    plan = request.take_matched()
    if plan is None:
        return original(adder, req, *args, **kwargs)
    stale = req.last_node is not plan.contiguous_node or len(req.prefix_indices) != (
        plan.contiguous_len
    )
    hole_tokens = plan.recompute_tokens
    new_tokens = hole_tokens + len(req.full_untruncated_fill_ids) - plan.prefix_len
    needs_chunking = adder.rem_chunk_tokens is not None and new_tokens > adder.rem_chunk_tokens
    if stale or needs_chunking:
        cache.counters.chunk_fallbacks += 1
        return original(adder, req, *args, **kwargs)

    contiguous = (req.prefix_indices, req.last_node)
    req.prefix_indices = cache.composite_prefix(plan)
    req.last_node = plan.last_node
    _charge(adder, hole_tokens)
    admitted_before = len(adder.can_run_list)
    result = original(adder, req, *args, **kwargs)
    admitted = len(adder.can_run_list) > admitted_before and adder.can_run_list[-1] is req
    assert adder.new_chunked_req is not req, "a hole plan was chunked; budget check is wrong"
    if admitted:
        # SGLang counted M as hits; only the retained part of it is.
        adder.log_hit_tokens -= hole_tokens
        adder.log_input_tokens += hole_tokens
        request.admitted = plan
    else:
        _charge(adder, -hole_tokens)
        req.prefix_indices, req.last_node = contiguous
    return result
