"""Issue 12's reuse model, prototyped in the simulator: SGLang's RadixCache evicting the leaf with
the least recompute cost per token (position-aware) times hit density at its idle age
(``asymcache_sglang.core.hit_density``), learned online from the tree's own events.

A node's idle period starts when its last lock is released (or when a finished request inserts
it) and ends when a request locks it again (a hit) or it is evicted. Locks, not prefix matches,
mark reuse: the scheduler matches a waiting request's prefix on every pass, but locks it once,
when the request is admitted; a chunked request keeps its path locked between chunks.

``LearnedReturnRadixCache`` is the other prototype: AsymCache's holds ranked by the ratio of cost
to each program's expected wait, which a static heap key cannot keep. ``ClassHitDensityRadixCache``
brings the hit density into AsymCache's hole-aware tree for the nodes no waiting program holds,
one density per class of how many times requests found the node in the cache (LHD's classes).
"""

from __future__ import annotations

import math
import random
import weakref
from array import array
from collections.abc import Callable, Hashable
from typing import Any

from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.evict_policy import EvictionStrategy
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey, TreeNode

from asymcache_sglang.core.cost import CostModel
from asymcache_sglang.core.hit_density import HitDensity, HitDensityConfig
from asymcache_sglang.core.tree import CacheNode, HoleAwareTree, InsertOutcome
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

    def __init__(
        self, params: CacheInitParams, config: Any, latency: Any, clock: Callable[[], float]
    ) -> None:
        super().__init__(params, config, latency, clock=clock)
        assert self.programs is not None, "needs --asymcache-holds on"
        self.tree.next_use_in_s = self.programs.next_use_in_s


# Classes by how many times requests found a node in the cache: never, once, more.
REUSE_CLASSES = 3
# Free nodes drawn per eviction (LHD's sampling: the density changes as nodes age).
SAMPLES = 32


class ClassHitDensityTree(HoleAwareTree):
    """AsymCache's tree whose free nodes (released ones first, as in the tree) go by the least
    recompute cost per token times the hit density at their idle age, in their reuse class,
    drawn from ``SAMPLES`` of them at each eviction; a waiting program's held nodes compete as
    in the tree, by cost over expected wait. A class not learned yet goes by the never-reused
    class's density; until that is learned, the tree's own order. Idle periods are fed by
    ``ClassHitDensityRadixCache``'s locks."""

    density_config = HitDensityConfig()

    def reset(self) -> None:
        super().reset()
        # The last node of the latest insert: where a finished request's path ends.
        self.last_inserted: CacheNode | None = None
        self.idle_since: dict[int, float] = {}
        self.reuses: dict[int, int] = {}
        self.densities = [HitDensity(self.density_config) for _ in range(REUSE_CLASSES)]
        self._rng = random.Random(0)
        # Victims chosen by hit density (the rest: the tree's own order, or a program's node).
        self.density_victims = 0

    def _class(self, node: CacheNode) -> int:
        return min(self.reuses.get(node.node_id, 0), REUSE_CLASSES - 1)

    def went_idle(self, node: CacheNode, now: float) -> None:
        self.idle_since.setdefault(node.node_id, now)

    def was_hit(self, node: CacheNode, now: float) -> None:
        since = self.idle_since.pop(node.node_id, None)
        if since is not None:
            self.densities[self._class(node)].observe_hit(now - since, len(node.key))
            self.reuses[node.node_id] = self.reuses.get(node.node_id, 0) + 1

    def insert(self, *args: Any, **kwargs: Any) -> InsertOutcome:
        outcome = super().insert(*args, **kwargs)
        self.last_inserted = outcome.last_node
        return outcome

    def _split(self, node: CacheNode, n: int, namespace: Hashable | None) -> CacheNode:
        upper = super()._split(node, n, namespace)
        for table in (self.idle_since, self.reuses):
            if node.node_id in table:
                table[upper.node_id] = table[node.node_id]
        return upper

    def evict_node(self, node: CacheNode) -> Any:
        since = self.idle_since.pop(node.node_id, None)
        if since is not None:
            density = self.densities[self._class(node)]
            density.observe_eviction(self.clock() - since, len(node.key))
        return super().evict_node(node)

    def _rank(self, node: CacheNode, now: float) -> float | None:
        """Cost per token times hit density at the node's idle age, by the density of its class,
        or of the never-reused class while its own is still unlearned."""
        age = now - self.idle_since.get(node.node_id, now)
        density = self.densities[self._class(node)].density(age)
        if density is None:
            density = self.densities[0].density(age)
        if density is None:
            return None
        return self.cost.cost_per_token(node.start, node.end) * density

    def _next_victim(
        self, now: float, candidates: list[tuple[Hashable, float]]
    ) -> CacheNode | None:
        free = self._top(self._heap)
        if free is None or free[0] == -math.inf or not self.densities[0].ready:
            return super()._next_victim(now, candidates)
        best_free, best_rank = free[-1], self._rank(free[-1], now)
        for _ in range(SAMPLES):
            entry = self._heap[self._rng.randrange(len(self._heap))]
            rank = self._rank(entry[-1], now) if self._live(entry) else None
            if rank is not None and (best_rank is None or rank < best_rank):
                best_free, best_rank = entry[-1], rank
        best, best_program = self._cheapest_program(now, candidates)
        if best_program is None or (best_rank is not None and best_rank <= best):
            self.density_victims += 1
            return best_free  # left in the heap: its entry goes stale when it is evicted
        return self._pop_held(best_program)


class ClassHitDensityRadixCache(HoleAwareRadixCache):
    """AsymCache's cache on ``ClassHitDensityTree``, feeding it idle periods as
    ``HitDensityRadixCache`` does: a lock of an idle node ends its period in a hit; the last
    unlock, or a finished request's insert, starts one; an eviction ends it unused."""

    tree_class = ClassHitDensityTree

    def inc_lock_ref(self, node: Any) -> Any:
        now = self.tree.clock()
        walk = node
        while walk is not None and walk is not self.tree.root:
            if walk.lock_ref == 0:
                self.tree.was_hit(walk, now)
            walk = walk.parent
        return super().inc_lock_ref(node)

    def dec_lock_ref(self, node: Any, params: Any = None) -> Any:
        now = self.tree.clock()
        walk = node
        while walk is not None and walk is not self.tree.root:
            if walk.lock_ref == 1:
                self.tree.idle_since[walk.node_id] = now
            walk = walk.parent
        return super().dec_lock_ref(node, params)

    def cache_finished_req(
        self, req: Any, is_insert: bool = True, *, kv_len_to_handle: int
    ) -> None:
        self.tree.last_inserted = None
        super().cache_finished_req(req, is_insert, kv_len_to_handle=kv_len_to_handle)
        # What the request added past its locked path was never locked: idle from now on.
        now, node = self.tree.clock(), self.tree.last_inserted
        while node is not None and node is not self.tree.root:
            if node.lock_ref == 0 and node.value is not None:
                self.tree.went_idle(node, now)
            node = node.parent
