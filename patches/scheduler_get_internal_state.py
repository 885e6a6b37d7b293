"""AFTER ``sglang.srt.managers.scheduler.Scheduler.get_internal_state`` (SGLang 0.5.16).

Adds AsymCache's own counters (holes planned, recomputed and adopted, interior evictions) to
``/get_server_info`` under ``internal_states[i]["asymcache"]``, and the latency model's fit and
chunk decisions under ``["asymcache_latency"]``.
"""

from __future__ import annotations

from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff

TARGET = "sglang.srt.managers.scheduler.Scheduler.get_internal_state"
HOOK_TYPE = HookType.AFTER


def hook(result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> None:
    cache = handoff.enabled_cache(scheduler.tree_cache)
    if cache is not None:
        result.internal_state["asymcache"] = cache.stats_snapshot()
        result.internal_state["asymcache_latency"] = cache.latency.snapshot().as_json()
