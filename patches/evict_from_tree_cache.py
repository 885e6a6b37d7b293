"""AROUND ``sglang.srt.mem_cache.common.evict_from_tree_cache`` (SGLang 0.5.16).

When the pool has fewer free slots than an allocation needs, SGLang's standard path evicts as
many tokens as the allocation asks for, not the shortfall (its hybrid SWA path evicts the
shortfall). An 8,192-token chunk that finds 8,000 slots free so drops 8,192 cached tokens where
192 would do. For AsymCache's cache only the shortfall is evicted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff

TARGET = "sglang.srt.mem_cache.common.evict_from_tree_cache"
HOOK_TYPE = HookType.AROUND


def hook(original: Callable[..., Any], tree_cache: Any, num_tokens: int) -> None:
    cache = handoff.enabled_cache(tree_cache)
    if cache is None:
        return original(tree_cache, num_tokens)
    shortfall = num_tokens - cache.token_to_kv_pool_allocator.available_size()
    if shortfall > 0:
        cache.evict(EvictParams(num_tokens=shortfall))
    return None
