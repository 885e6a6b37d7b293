"""Issue 12's reuse model, prototyped in the simulator: SGLang's RadixCache evicting the leaf with
the least recompute cost per token (position-aware) times hit density at its idle age
(``asymcache_sglang.core.hit_density``), learned online from the tree's own events.

A node's idle period starts when its last lock is released (or when a finished request inserts
it) and ends when a request locks it again (a hit) or it is evicted. Locks, not prefix matches,
mark reuse: the scheduler matches a waiting request's prefix on every pass, but locks it once,
when the request is admitted; a chunked request keeps its path locked between chunks.

``LearnedReturnRadixCache`` is the other prototype: AsymCache's holds ranked by the ratio of cost
to each program's expected wait, which a static heap key cannot keep.
"""

from __future__ import annotations

import weakref
from array import array
from collections.abc import Callable
from typing import Any

from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.evict_policy import EvictionStrategy
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey, TreeNode

from asymcache_sglang.core.cost import CostModel
from asymcache_sglang.core.hit_density import HitDensity
from asymcache_sglang.radix_cache import HoleAwareRadixCache
from eval.sim.oracle import NextUseHoleAwareTree, node_start


class HitDensityStrategy(EvictionStrategy):
    """Priority of a leaf: cost per token at its position times the hit density at its idle
    age, then when it went idle; until the density is learned, when it went idle (LRU)."""

    def __init__(self, cost: CostModel, clock: Callable[[], float]) -> None:
        self.cost = cost
        self.clock = clock
        self.density = HitDensity()
        # When each idle node went idle; a node absent is locked, or new to the strategy.
        self.idle_since: weakref.WeakKeyDictionary[TreeNode, float] = weakref.WeakKeyDictionary()

    def get_priority(self, node: TreeNode) -> tuple[float, float]:
        since = self.idle_since.setdefault(node, self.clock())
        density = self.density.density(self.clock() - since)
        if density is None:
            return (0.0, since)
        start = node_start(node)
        return (self.cost.cost_per_token(start, start + len(node.key)) * density, since)


class HitDensityRadixCache(RadixCache):
    """SGLang's RadixCache ranked by ``HitDensityStrategy``, feeding it the tree's idle periods."""

    def __init__(
        self, params: CacheInitParams, cost: CostModel, clock: Callable[[], float]
    ) -> None:
        super().__init__(params)
        self.learned = HitDensityStrategy(cost, clock)
        self.eviction_strategy = self.learned

    def inc_lock_ref(self, node: TreeNode):
        now = self.learned.clock()
        walk = node
        while walk is not None and walk is not self.root_node:
            if walk.lock_ref == 0 and walk in self.learned.idle_since:
                since = self.learned.idle_since.pop(walk)
                self.learned.density.observe_hit(now - since, len(walk.key))
            walk = walk.parent
        return super().inc_lock_ref(node)

    def dec_lock_ref(self, node: TreeNode, params=None):
        now = self.learned.clock()
        walk = node
        while walk is not None and walk is not self.root_node:
            if walk.lock_ref == 1:
                self.learned.idle_since[walk] = now
            walk = walk.parent
        return super().dec_lock_ref(node, params)

    def cache_finished_req(self, req, is_insert: bool = True, *, kv_len_to_handle: int):
        super().cache_finished_req(req, is_insert, kv_len_to_handle=kv_len_to_handle)
        # The tail just inserted was never locked: it goes idle now with the rest of the path.
        now = self.learned.clock()
        ids = array("q", (req.origin_input_ids + req.output_ids)[:kv_len_to_handle])
        _, walk = self._match_prefix_helper(self.root_node, RadixKey(ids, None))
        while walk is not None and walk is not self.root_node:
            if walk.lock_ref == 0:
                self.learned.idle_since.setdefault(walk, now)
            walk = walk.parent

    def _split_node(self, key: RadixKey, child: TreeNode, split_len: int) -> TreeNode:
        upper = super()._split_node(key, child, split_len)
        if child in self.learned.idle_since:
            self.learned.idle_since[upper] = self.learned.idle_since[child]
        return upper

    def _delete_leaf(self, node: TreeNode) -> None:
        since = self.learned.idle_since.pop(node, None)
        if since is not None:
            self.learned.density.observe_eviction(self.learned.clock() - since, len(node.key))
        super()._delete_leaf(node)


class LearnedReturnRadixCache(HoleAwareRadixCache):
    """AsymCache's cache with its holds (the programs and returns it learns from the requests it
    sees, ``ProgramTracker``), on ``NextUseHoleAwareTree``: ranked by recompute cost per token
    over the seconds until a node's soonest program is back, afresh at each call."""

    tree_class = NextUseHoleAwareTree

    def __init__(self, params: CacheInitParams, config: Any, latency: Any) -> None:
        super().__init__(params, config, latency)
        assert self.programs is not None, "needs --asymcache-holds on"
        self.tree.next_use_in_s = self.programs.next_use_in_s
