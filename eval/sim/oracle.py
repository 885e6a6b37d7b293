"""References for the simulator: Belady's MIN on SGLang's radix tree, cost-weighted, and an
online variant of it that estimates each session's return from the gaps it has seen.

Every cached node is tagged with the sessions whose prompts run through it. In a simulation the
engine knows each session's next call: imminent while one waits or runs, at its scheduled
arrival while the session thinks or waits on a tool, never after its last. Eviction takes the
leaf with the least recompute cost per token (position-aware, from the latency model) per second
until its next use, so KV nobody needs again goes first, cheapest first. With variable sizes and
costs this rule is a strong reference, not a proven optimum: it sees the next use only, and
evicts leaves only, as SGLang's tree does. ``NextUseHoleAwareTree`` applies the same rule to
AsymCache's hole-aware tree, interior nodes included, with whatever next-use estimate it is given.
"""

from __future__ import annotations

import functools
import math
import weakref
from array import array
from collections.abc import Callable, Hashable
from typing import Any

from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.evict_policy import EvictionStrategy
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey, TreeNode

from asymcache_sglang.core.cost import CostModel
from asymcache_sglang.core.tree import CacheNode, HoleAwareTree
from asymcache_sglang.radix_cache import HoleAwareRadixCache

# Seconds until its next use of a session, from the engine (0: now, inf: never).
NextUse = Callable[[int], float]


class NextUseStrategy(EvictionStrategy):
    """Priority of a leaf: its cost per token over the seconds until its sessions' next use."""

    def __init__(self, cost: CostModel, next_use_in_s: NextUse) -> None:
        self.cost = cost
        self.next_use_in_s = next_use_in_s
        self.sessions: weakref.WeakKeyDictionary[TreeNode, set[int]] = weakref.WeakKeyDictionary()

    def get_priority(self, node: TreeNode) -> float:
        wait_s = min((self.next_use_in_s(s) for s in self.sessions.get(node, ())), default=math.inf)
        start = node_start(node)
        return self.cost.cost_per_token(start, start + len(node.key)) / max(wait_s, 1e-9)


def node_start(node: TreeNode) -> int:
    """The node's first position: the tokens on the path above it."""
    start, parent = 0, node.parent
    while parent is not None:
        start += len(parent.key)
        parent = parent.parent
    return start


class OracleRadixCache(RadixCache):
    """SGLang's RadixCache evicting by ``NextUseStrategy``; tags follow splits and evictions."""

    def __init__(self, params: CacheInitParams, cost: CostModel, next_use_in_s: NextUse) -> None:
        super().__init__(params)
        self.oracle = NextUseStrategy(cost, next_use_in_s)
        self.eviction_strategy = self.oracle

    def tag_path(self, token_ids: array, session: int) -> None:
        """Mark every node on the cached path of ``token_ids`` as used by ``session``."""
        node = self.match_prefix_node(token_ids)
        while node is not None and node is not self.root_node:
            self.oracle.sessions.setdefault(node, set()).add(session)
            node = node.parent

    def match_prefix_node(self, token_ids: array) -> TreeNode:
        _, node = self._match_prefix_helper(self.root_node, RadixKey(token_ids, None))
        return node

    def _split_node(self, key: RadixKey, child: TreeNode, split_len: int) -> TreeNode:
        upper = super()._split_node(key, child, split_len)
        # Whoever uses the lower part uses the upper part too.
        self.oracle.sessions[upper] = set(self.oracle.sessions.get(child, ()))
        return upper

    def _delete_leaf(self, node: TreeNode) -> None:
        tags = self.oracle.sessions.pop(node, set())
        self.oracle.sessions.setdefault(node.parent, set()).update(tags)
        super()._delete_leaf(node)


class NextUseHoleAwareTree(HoleAwareTree):
    """AsymCache's hole-aware tree ranking eviction by its programs' next use, a prototype of
    issue 12's reuse model: the resident node with the least recompute cost per token per
    second until the soonest of its owners is back goes first, so within one program the cheap
    head goes before the tail; a node no program owns counts its idle time as that wait. Ranked
    afresh at each call (O(nodes)): a simulation-only sketch, not the 1 ms ranking."""

    # Seconds until a program (an owner) is back; None: rank as HoleAwareTree does.
    next_use_in_s: Callable[[Hashable], float] | None = None

    def evict(self, num_tokens: int) -> list[Any]:
        if self.next_use_in_s is None:
            return super().evict(num_tokens)
        now = self.clock()
        next_use = functools.cache(self.next_use_in_s)  # one estimate per program per call

        def priority(node: CacheNode) -> tuple[float, int]:
            if node.released:
                return (-math.inf, -node.start)
            waits = [next_use(owner) for owner in node.owners or ()]
            wait_s = min(waits) if waits else now - node.last_access_time
            cost = self.cost.cost_per_token(node.start, node.end)
            return (cost / max(wait_s, 1e-9), -node.start)

        freed: list[Any] = []
        count = 0
        for node in sorted(filter(self.is_evictable, self.iter_nodes()), key=priority):
            if count >= num_tokens:
                break
            if self.is_evictable(node):  # an earlier eviction may have removed it
                node = self._part_to_evict(node, num_tokens - count)
                count += len(node.key)
                freed.append(self.evict_node(node))
        return freed


class NextUseHoleAwareRadixCache(HoleAwareRadixCache):
    """AsymCache's cache on ``NextUseHoleAwareTree``."""

    tree_class = NextUseHoleAwareTree
