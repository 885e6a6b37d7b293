"""Issue 12's reuse model, prototyped in the simulator: SGLang's RadixCache evicting the leaf with
the least recompute cost per token (position-aware) times hit density at its idle age
(``asymcache_sglang.core.hit_density``), learned online from the tree's own events.

A node's idle period starts when its last lock is released (or when a finished request inserts
it) and ends when a request locks it again (a hit) or it is evicted. Locks, not prefix matches,
mark reuse: the scheduler matches a waiting request's prefix on every pass, but locks it once,
when the request is admitted; a chunked request keeps its path locked between chunks.
"""

from __future__ import annotations

import itertools
import weakref
from array import array
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams, MatchResult
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.evict_policy import EvictionStrategy
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey, TreeNode

from asymcache_sglang.core.cost import CostModel
from asymcache_sglang.core.hit_density import HitDensity
from asymcache_sglang.radix_cache import HoleAwareRadixCache
from eval.sim.oracle import NextUseHoleAwareTree, ReturnTimes, node_start


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
    """Issue 12's reuse model as a server could run it, prototyped: AsymCache's cache on
    ``NextUseHoleAwareTree`` with nothing from the engine. A request's program is its
    ``session_id`` or, without one, the conversation it continues: the program whose whole last
    request its prompt begins with (found by that request's length and last tokens, so it
    survives the eviction of the last request's KV), or a new one. A program's return gap is
    the time from its last request's release to its next request's first match, pooled over
    programs (``ReturnTimes``); a waiting program is expected back after the mean of the gaps
    longer than its idle time, a program with a request in is back now."""

    tree_class = NextUseHoleAwareTree
    # Tokens at the end of a request that identify it among requests of its length.
    TIP_TOKENS = 16

    def __init__(self, params: CacheInitParams, config: Any, latency: Any) -> None:
        super().__init__(params, config, latency)
        self.returns = ReturnTimes()
        self.programs: dict[str, Hashable] = {}  # request id -> its program
        self.released_at: dict[Hashable, float] = {}  # waiting program -> its last release
        # (length, last tokens) of each program's last request -> the program, and back.
        self.tips: dict[tuple[int, tuple[int, ...]], Hashable] = {}
        self.tip_of: dict[Hashable, tuple[int, tuple[int, ...]]] = {}
        self._auto = itertools.count()
        self.tree.next_use_in_s = self.next_use_in_s

    def next_use_in_s(self, program: Hashable) -> float:
        since = self.released_at.get(program)
        if since is None:  # a request of it is in
            return 0.0
        return self.returns.expected_remaining_s(self.tree.clock() - since)

    def _tip(self, tokens: Sequence[int], length: int) -> tuple[int, tuple[int, ...]]:
        return (length, tuple(tokens[max(0, length - self.TIP_TOKENS) : length]))

    def _continued(self, tokens: Sequence[int]) -> Hashable:
        """The program whose last request ``tokens`` begin with (the longest), or a new one."""
        for length in sorted({n for n, _ in self.tips if n <= len(tokens)}, reverse=True):
            program = self.tips.get(self._tip(tokens, length))
            if program is not None:
                return program
        return f"auto-{next(self._auto)}"

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        result = super().match_prefix(params)
        req = params.req
        if req is not None and req.rid not in self.programs:
            program = req.session_id or self._continued(params.key.raw_token_ids())
            self.programs[req.rid] = program
            since = self.released_at.pop(program, None)
            if since is not None:
                self.returns.observe(self.tree.clock() - since)
        return result

    def cache_finished_req(self, req: Any, is_insert: bool = True, **kwargs: Any) -> None:
        program = self.programs.pop(req.rid, None)
        session_id = req.session_id
        if program is not None and session_id is None:
            req.session_id = program  # so the insert tags the path with it
        super().cache_finished_req(req, is_insert, **kwargs)
        req.session_id = session_id
        if program is None or not is_insert:
            return
        self.released_at[program] = self.tree.clock()
        old = self.tip_of.pop(program, None)
        if old is not None:
            self.tips.pop(old, None)
        tokens = req.origin_input_ids + req.output_ids
        tip = self._tip(tokens, kwargs["kv_len_to_handle"])
        self.tips[tip], self.tip_of[program] = program, tip
