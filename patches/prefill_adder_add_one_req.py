"""AROUND ``sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req`` (SGLang 0.5.16).

Budgets a request with holes as holes plus tail (``plan_admission``). A plan larger than the
pass's chunk keeps the holes that fit; SGLang chunks the rest, and the ``add_chunked_req`` hook
carries it on in the next passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff
from asymcache_sglang.plan_admission import admit

TARGET = "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req"
HOOK_TYPE = HookType.AROUND


def hook(original: Callable[..., Any], adder: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    cache = handoff.enabled_cache(adder.tree_cache)
    if cache is None:
        return original(adder, req, *args, **kwargs)
    plan = handoff.request_plan(req).take_matched()
    if plan is None:
        return original(adder, req, *args, **kwargs)
    stale = req.last_node is not plan.contiguous_node or len(req.prefix_indices) != (
        plan.contiguous_len
    )
    if stale:
        cache.counters.stale_plans += 1
        return original(adder, req, *args, **kwargs)
    return admit(
        cache,
        adder,
        req,
        plan,
        lambda: original(adder, req, *args, **kwargs),
        chunk_tokens=adder.rem_chunk_tokens,
        logs_prefix_as_hits=True,
        budgets_whole_request=True,
    )
