"""AROUND ``sglang.srt.managers.schedule_policy.PrefillAdder.add_chunked_req`` (SGLang 0.5.16).

SGLang continues a chunked request from the end of its last chunk without matching it again.
AsymCache matches the rest of its prompt first: holes that an earlier chunk did not reach are
admitted as a plan for this chunk (``plan_admission``), and resident KV after the last chunk is
reused instead of recomputed. What the earlier chunks wrote stays locked: the lock moves from
the node ``cache_unfinished_req`` locked to this chunk's deepest reused node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff
from asymcache_sglang.plan_admission import count_plan_chunk, fit_to_chunk, run_with_plan

TARGET = "sglang.srt.managers.schedule_policy.PrefillAdder.add_chunked_req"
HOOK_TYPE = HookType.AROUND


def hook(original: Callable[..., Any], adder: Any, req: Any) -> Any:
    cache = handoff.enabled_cache(adder.tree_cache)
    if cache is None:
        return original(adder, req)
    request = handoff.request_plan(req)
    written, locked = req.prefix_indices, req.last_node
    req.init_next_round_input(cache)
    plan = request.take_matched()
    if len(req.prefix_indices) < len(written):
        # The tree lost what this request wrote (it is locked, so this is not expected): go on
        # from the request's own slots as SGLang would.
        req.prefix_indices, req.last_node, req.cache_protected_len = written, locked, len(written)
        return original(adder, req)
    # The matched prefix is the tree's, as cache_protected_len (set by the match) says.
    request.retained = None
    budget = min(adder.rem_chunk_tokens, int(adder.rem_total_tokens))
    if plan is not None:
        tail_tokens = len(req.full_untruncated_fill_ids) - plan.prefix_len
        fitted = fit_to_chunk(cache, plan, tail_tokens, budget)
        if fitted is None:
            count_plan_chunk(cache, req)
        plan = fitted
    if plan is None:
        result = original(adder, req)
    else:
        result, _ = run_with_plan(
            cache, adder, req, plan, lambda: original(adder, req), logs_prefix_as_hits=False
        )
        if result is req:
            cache.counters.chunked_plans += 1
    cache.inc_lock_ref(req.last_node)
    cache.dec_lock_ref(locked)
    return result
