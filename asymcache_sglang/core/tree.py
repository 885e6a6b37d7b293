"""Hole-aware radix tree: the pure-Python core of AsymCache's prefix cache.

A node is *resident* (``value`` holds one KV slot per token) or a *hole* (``value is None``: the
tokens are kept, the KV was freed). Any unlocked resident node can be evicted, interior ones
included, so a path can read ``hole, resident, hole, resident``. Values are opaque slot sequences
(torch tensors in the server, lists in tests); the tree only slices them and hands freed ones back.

With ``page_size`` P > 1 every node starts and ends on a page boundary, as in SGLang's RadixCache:
children are keyed by their first page, matches are rounded down to whole pages and inserts are
page-aligned, so holes, retained ranges and plans are whole pages.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from array import array
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from asymcache_sglang.core.cost import CostModel, eviction_key
from asymcache_sglang.core.digest import digest_of
from asymcache_sglang.core.reuse import ReuseEstimator

Range = tuple[int, int]

# Programs an eviction weighs, those expected back last: cost over wait is not a static order,
# and these few hold the best choice unless a sooner program's head is far cheaper.
PROGRAM_CANDIDATES = 8


class CacheNode:
    __slots__ = (
        "children",
        "parent",
        "key",
        "value",
        "lock_ref",
        "last_access_time",
        "start",
        "version",
        "node_id",
        "ckey",
        "owners",
        "released",
        "shared",
    )

    def __init__(self, key: array, value: Any, parent: CacheNode | None, start: int, node_id: int):
        self.children: dict[Hashable, CacheNode] = {}
        self.parent = parent
        self.key = key
        self.value = value
        self.lock_ref = 0
        self.last_access_time = 0.0
        self.start = start
        self.version = 0
        self.node_id = node_id
        self.ckey: Hashable = None
        # The programs (SGLang session ids) whose requests ran through this node; None: none.
        self.owners: set[Hashable] | None = None
        # Every owner said it is done (and nothing touched the node since): evicted first.
        self.released = False
        # More programs ran through it than the tree tracks: ranked as if no program owned it.
        self.shared = False

    @property
    def end(self) -> int:
        return self.start + len(self.key)

    def __repr__(self) -> str:
        kind = "hole" if self.value is None else "resident"
        span = f"[{self.start},{self.end})"
        return f"CacheNode(#{self.node_id}, {span}, {kind}, lock={self.lock_ref})"


@dataclass
class SegmentPlan:
    """How a request reuses a matched path: retained ranges, ranges to recompute, then the tail."""

    prefix_len: int
    retained: list[Range]
    retained_values: list[list[Any]]
    # The deepest node of each retained range.
    retained_nodes: list[CacheNode]
    recompute: list[Range]
    last_node: CacheNode
    contiguous_len: int
    contiguous_node: CacheNode

    @property
    def recompute_tokens(self) -> int:
        return sum(e - s for s, e in self.recompute)

    @property
    def retained_tokens(self) -> int:
        return sum(e - s for s, e in self.retained)

    @property
    def has_holes(self) -> bool:
        return bool(self.recompute)

    def fit(self, max_recompute_tokens: int) -> SegmentPlan | None:
        """The leading part of this plan whose holes total at most ``max_recompute_tokens``.

        It ends with the retained range before the first hole left out, so a contiguous extend
        after it starts with that hole. None when not even the first hole fits.
        """
        kept, total = 0, 0
        for s, e in self.recompute:
            if total + e - s > max_recompute_tokens:
                break
            kept, total = kept + 1, total + e - s
        if kept == len(self.recompute):
            return self
        if kept == 0:
            return None
        cut = self.recompute[kept][0]
        n = sum(1 for _, e in self.retained if e <= cut)
        return replace(
            self,
            prefix_len=self.retained[n - 1][1],
            retained=self.retained[:n],
            retained_values=self.retained_values[:n],
            retained_nodes=self.retained_nodes[:n],
            recompute=self.recompute[:kept],
            last_node=self.retained_nodes[n - 1],
        )


@dataclass
class InsertOutcome:
    """Result of inserting a request's tokens: slots the caller must free, and the path's values."""

    duplicates: list[Any]
    path_values: list[Any]
    last_node: CacheNode
    # The token ranges whose slots filled holes, in order.
    adopted_ranges: list[Range]

    @property
    def adopted_tokens(self) -> int:
        return sum(e - s for s, e in self.adopted_ranges)


@dataclass
class TreeStats:
    """Counters the server reports (tokens, not nodes)."""

    evicted_tokens: int = 0
    interior_evicted_tokens: int = 0
    adopted_hole_tokens: int = 0
    duplicate_recompute_tokens: int = 0
    collected_hole_nodes: int = 0
    fallback_plans: int = 0
    released_tokens: int = 0
    # Tokens that stayed resident because an eviction took only part of a longer node.
    split_kept_tokens: int = 0
    # The nodes evicted, in order (ids and lengths): TP ranks must have the same.
    evicted_nodes_digest: int = 0


def _common_prefix_len(a: array, b: array, b_start: int, page_size: int) -> int:
    """Tokens ``a`` and ``b[b_start:]`` share, rounded down to whole pages."""
    n = min(len(a), len(b) - b_start)
    if a[:n] == b[b_start : b_start + n]:
        return n - n % page_size
    # Bisect on slice compares (C loops): a long match ending inside a node costs O(log n)
    # Python steps, not one per token. Invariant: a[:lo] matches, a[:hi] does not.
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[b_start + lo : b_start + mid]:
            lo = mid
        else:
            hi = mid
    return lo - lo % page_size


def _runs(spans: Iterable[tuple[bool, int, int, list[CacheNode]]]) -> list[list[Any]]:
    """Merge adjacent spans of the same kind into runs ``[kind, start, end, nodes]``."""
    runs: list[list[Any]] = []
    for kind, start, end, nodes in spans:
        if runs and runs[-1][0] == kind:
            runs[-1][2] = end
            runs[-1][3].extend(nodes)
        else:
            runs.append([kind, start, end, list(nodes)])
    return runs


def owned_ranges(lo: int, hi: int, retained: Sequence[Range]) -> list[Range]:
    """Sub-ranges of [lo, hi) not covered by the sorted, disjoint ``retained`` ranges."""
    out: list[Range] = []
    cur = lo
    for s, e in retained:
        if e <= cur:
            continue
        if s >= hi:
            break
        if s > cur:
            out.append((cur, s))
        cur = max(cur, e)
        if cur >= hi:
            break
    if cur < hi:
        out.append((cur, hi))
    return out


class ReturnTimes(Protocol):
    """When programs are expected back (``core.programs.ProgramTracker``)."""

    def back_at(self, program: Hashable) -> float | None: ...

    def changed(self, now: float) -> Iterable[Hashable]: ...

    @property
    def ready(self) -> bool: ...


class HoleAwareTree:
    """Radix tree whose resident set along a path need not be prefix-closed.

    Eviction pops a lazy min-heap keyed by log(P(reuse) * cost per token): O(log n) per evicted
    node. Entries carry the node's version; any change bumps the version and stale entries are
    skipped on pop.

    With ``returns`` (soft holds), a node that one program alone owns is held: it waits in its
    program's heap, cheapest token first, so a waiting program's head goes before its tail, and
    the programs wait in a heap by when each is expected back, the latest first. A program's
    move (``returns.changed``) re-keys one program entry, none of its nodes. An eviction takes
    the candidate with the least recompute cost per token per second it is expected to wait: the
    top of the other nodes' heap (waiting as long as it has been idle) or the cheapest node of
    one of the programs expected back last. Until ``returns`` can estimate returns nothing is
    held.
    """

    def __init__(
        self,
        cost: CostModel,
        reuse: ReuseEstimator,
        *,
        max_holes: int = 8,
        min_retained_tokens: int = 16,
        clock: Callable[[], float] = time.monotonic,
        returns: ReturnTimes | None = None,
        max_owners: int = 16,
        page_size: int = 1,
        split_evictions: bool = True,
        split_granule_tokens: int = 256,
    ) -> None:
        """``max_holes`` >= 0 (0: leaf-only eviction), ``min_retained_tokens`` >= 1; a node that
        more than ``max_owners`` programs ran through is shared: no release frees it; inserts
        are whole pages of ``page_size`` tokens; ``split_evictions``: an eviction takes no more
        of a node than it needs, in whole granules of ``split_granule_tokens`` (rounded up to
        pages) so that decode steps a few slots short do not cut paths into slivers (False:
        whole nodes, as SGLang's tree evicts)."""
        if max_owners < 1:
            raise ValueError(f"max_owners must be >= 1, got {max_owners}")
        if page_size < 1 or split_granule_tokens < 1:
            raise ValueError(
                f"need page_size, split_granule_tokens >= 1: {page_size}, {split_granule_tokens}"
            )
        self.page_size = page_size
        self.cost = cost
        self.reuse = reuse
        self.max_holes = max_holes
        self.min_retained_tokens = min_retained_tokens
        self.clock = clock
        self.returns = returns
        self.max_owners = max_owners
        self.split_evictions = split_evictions
        self.split_granule = -(-split_granule_tokens // page_size) * page_size
        self.reset()

    def reset(self) -> None:
        self._ids = itertools.count()
        self.root = CacheNode(array("q"), [], None, 0, next(self._ids))
        self.root.lock_ref = 1
        self.evictable_size = 0
        self.protected_size = 0
        self.num_nodes = 1
        self.stats = TreeStats()
        # Entries end with (version, node); an entry whose version is not the node's is stale.
        self._heap: list[tuple[float, int, int, int, CacheNode]] = []
        # Held nodes: each program's, by (cost per token, -start); the programs, by (-back time,
        # cost of its cheapest node), each with the key of its live entry.
        self._holding = False
        self._program_nodes: dict[Hashable, list[tuple[float, int, int, int, CacheNode]]] = {}
        self._program_order: list[tuple[float, float, int, Hashable]] = []
        self._program_key: dict[Hashable, tuple[float, float]] = {}
        self._held_entries = 0
        self._seq = itertools.count()
        self._key_tau = self.reuse.tau_s
        self._owned: dict[Hashable, set[CacheNode]] = {}

    # ----- keys and the eviction heap -----

    def child_key(self, tokens: Sequence[int], pos: int, namespace: Hashable | None) -> Hashable:
        """The key of the child that starts at ``tokens[pos]``: its first token, or page."""
        first = tokens[pos] if self.page_size == 1 else tuple(tokens[pos : pos + self.page_size])
        return first if namespace is None else (namespace, first)

    def is_evictable(self, node: CacheNode) -> bool:
        # Without holes a hole could never be recomputed cheaply: evict leaves only.
        return (
            node.value is not None
            and node.lock_ref == 0
            and node.parent is not None
            and (self.max_holes > 0 or not node.children)
        )

    def _changed(self, node: CacheNode) -> None:
        node.version += 1
        if not self.is_evictable(node):
            return
        holder = self._holder(node)
        if holder is not None:
            cost = self.cost.cost_per_token(node.start, node.end)
            entry = (cost, -node.start, next(self._seq), node.version, node)
            heapq.heappush(self._program_nodes.setdefault(holder, []), entry)
            self._held_entries += 1
            key = self._program_key.get(holder)
            if key is None or cost < key[1]:
                self._order_program(holder)
        else:
            key = (
                -math.inf
                if node.released
                else eviction_key(
                    self.cost,
                    self.reuse,
                    self._key_tau,
                    node.start,
                    node.end,
                    node.last_access_time,
                    len(node.children),
                )
            )
            # Ties go to the deeper node, so uniform cost evicts exactly like leaf-first LRU.
            heapq.heappush(self._heap, (key, -node.start, next(self._seq), node.version, node))
        if len(self._heap) + self._held_entries > 4 * self.num_nodes + 64:
            self._compact_heap()

    def _holder(self, node: CacheNode) -> Hashable | None:
        """The one program that holds the node; None: it ranks by the cost key."""
        if not self._holding or node.released or node.owners is None or len(node.owners) != 1:
            return None
        return next(iter(node.owners))

    def _order_program(self, program: Hashable) -> None:
        """(Re)place a program by its return and its cheapest node: among programs expected
        back at one time (never, most often) the cheapest token goes first, whoever's it is."""
        assert self.returns is not None
        back = self.returns.back_at(program)
        assert back is not None, "returns are estimated once holding starts"
        top = self._top(self._program_nodes.get(program, []))
        key = (-back, math.inf if top is None else top[0])
        self._program_key[program] = key
        heapq.heappush(self._program_order, (*key, next(self._seq), program))

    def _live(self, entry: tuple[Any, ...]) -> bool:
        return entry[-2] == entry[-1].version and self.is_evictable(entry[-1])

    def _compact_heap(self) -> None:
        self._heap = [e for e in self._heap if self._live(e)]
        heapq.heapify(self._heap)
        for program, heap in list(self._program_nodes.items()):
            heap[:] = [e for e in heap if self._live(e)]
            heapq.heapify(heap)
            if not heap:
                del self._program_nodes[program]
                self._program_key.pop(program, None)
        self._held_entries = sum(map(len, self._program_nodes.values()))
        self._program_order = [
            e for e in self._program_order if self._program_key.get(e[3]) == e[:2]
        ]
        heapq.heapify(self._program_order)

    def maybe_rekey(self) -> bool:
        """Rebuild heap keys when the reuse horizon drifted; amortised over many matches."""
        tau = self.reuse.tau_s
        if abs(tau - self._key_tau) <= 0.25 * self._key_tau:
            return False
        self._key_tau = tau
        live = [e[-1] for e in self._heap if self._live(e)]
        self._heap = []
        for node in live:
            self._changed(node)
        return True

    # ----- structure -----

    def _split(self, node: CacheNode, n: int, namespace: Hashable | None) -> CacheNode:
        """Split ``node`` after ``n`` tokens; returns the new upper node."""
        parent = node.parent
        assert parent is not None and 0 < n < len(node.key)
        upper_value = None if node.value is None else node.value[:n]
        upper = CacheNode(node.key[:n], upper_value, parent, node.start, next(self._ids))
        upper.lock_ref = node.lock_ref
        upper.last_access_time = node.last_access_time
        upper.released = node.released
        if node.owners:
            upper.owners = set(node.owners)
            for owner in node.owners:
                self._owned[owner].add(upper)
        upper.ckey = node.ckey
        parent.children[upper.ckey] = upper
        node.key = node.key[n:]
        node.value = None if node.value is None else node.value[n:]
        node.start += n
        node.parent = upper
        node.ckey = self.child_key(node.key, 0, namespace)
        upper.children[node.ckey] = node
        self.num_nodes += 1
        self._changed(node)
        self._changed(upper)
        return upper

    def _delete_dead_holes(self, node: CacheNode) -> None:
        """Remove childless, unlocked holes upward: a hole with nothing resident below is dead."""
        while (
            node.parent is not None
            and node.value is None
            and not node.children
            and node.lock_ref == 0
        ):
            parent = node.parent
            removed = parent.children.pop(node.ckey, None)
            assert removed is node, "tree corrupted: child key does not map to its node"
            self._untag(node)
            node.parent = None
            self.num_nodes -= 1
            self.stats.collected_hole_nodes += 1
            self._changed(parent)
            node = parent

    # ----- public operations -----

    def match(self, tokens: array, namespace: Hashable | None = None) -> list[CacheNode]:
        """Walk ``tokens`` through resident nodes and holes alike; splits at the match end."""
        now = self.clock()
        node = self.root
        pos = 0
        path: list[CacheNode] = []
        while pos < len(tokens):
            child = node.children.get(self.child_key(tokens, pos, namespace))
            if child is None:
                break
            n = _common_prefix_len(child.key, tokens, pos, self.page_size)
            if n < len(child.key):
                child = self._split(child, n, namespace)
            path.append(child)
            pos += n
            node = child
        if path and path[-1].value is not None and path[-1].last_access_time > 0:
            self.reuse.observe_gap(now - path[-1].last_access_time)
        for n_ in path:
            n_.last_access_time = now
            n_.released = False
            self._changed(n_)
        return path

    def plan(self, path: list[CacheNode]) -> SegmentPlan:
        """Turn a matched path into retained / recompute ranges under the hole bounds."""
        runs = _runs((node.value is not None, node.start, node.end, [node]) for node in path)
        contiguous_len, contiguous_node = 0, self.root
        if runs and runs[0][0]:
            contiguous_len, contiguous_node = runs[0][2], runs[0][3][-1]
        # A short retained island after a hole is cheaper to recompute than to split the extend.
        runs = _runs(
            (keep and (i == 0 or end - start >= self.min_retained_tokens), start, end, nodes)
            for i, (keep, start, end, nodes) in enumerate(runs)
        )
        while runs and not runs[-1][0]:
            runs.pop()
        retained: list[Range] = []
        retained_values: list[list[Any]] = []
        retained_nodes: list[CacheNode] = []
        recompute: list[Range] = []
        last_node = self.root
        bounded = False
        for run in runs:
            if run[0]:
                retained.append((run[1], run[2]))
                retained_values.append([n.value for n in run[3]])
                retained_nodes.append(run[3][-1])
                last_node = run[3][-1]
            elif len(recompute) < self.max_holes:
                recompute.append((run[1], run[2]))
            else:
                bounded = True
                break
        if bounded:
            self.stats.fallback_plans += 1
        # Every run kept so far is complete, so the prefix ends at the last retained range.
        prefix_len = retained[-1][1] if retained else 0
        return SegmentPlan(
            prefix_len=prefix_len,
            retained=retained,
            retained_values=retained_values,
            retained_nodes=retained_nodes,
            recompute=recompute,
            last_node=last_node,
            contiguous_len=contiguous_len,
            contiguous_node=contiguous_node,
        )

    def insert(
        self,
        tokens: array,
        values: Any,
        retained: Sequence[Range],
        namespace: Hashable | None = None,
    ) -> InsertOutcome:
        """Insert a request's tokens and slots.

        ``retained`` lists the ranges whose slots already belong to the tree (the request's
        locked, matched prefix); every other slot belongs to the caller. Caller slots that land
        on resident nodes are duplicates and are returned for freeing; those that land on holes
        are adopted; the rest form a new leaf. ``tokens`` is whole pages.
        """
        if len(tokens) % self.page_size:
            raise ValueError(f"insert of {len(tokens)} tokens: not whole pages of {self.page_size}")
        now = self.clock()
        node = self.root
        pos = 0
        duplicates: list[Any] = []
        path_values: list[Any] = []
        adopted_ranges: list[Range] = []
        while pos < len(tokens):
            ck = self.child_key(tokens, pos, namespace)
            child = node.children.get(ck)
            if child is None:
                assert not _overlaps(pos, len(tokens), retained), "retained range not in tree"
                child = CacheNode(tokens[pos:], values[pos:], node, pos, next(self._ids))
                child.ckey = ck
                child.last_access_time = now
                node.children[ck] = child
                self.num_nodes += 1
                self.evictable_size += len(child.key)
                self._changed(node)
                self._changed(child)
                path_values.append(child.value)
                node = child
                break
            n = _common_prefix_len(child.key, tokens, pos, self.page_size)
            if n < len(child.key):
                child = self._split(child, n, namespace)
            if child.value is None:
                assert not _overlaps(pos, pos + n, retained), "retained range maps onto a hole"
                child.value = values[pos : pos + n]
                if child.lock_ref > 0:
                    self.protected_size += n
                else:
                    self.evictable_size += n
                adopted_ranges.append((pos, pos + n))
            else:
                for s, e in owned_ranges(pos, pos + n, retained):
                    duplicates.append(values[s:e])
                    self.stats.duplicate_recompute_tokens += e - s
            child.last_access_time = now
            child.released = False
            self._changed(child)
            path_values.append(child.value)
            node = child
            pos += n
        outcome = InsertOutcome(duplicates, path_values, node, adopted_ranges)
        self.stats.adopted_hole_tokens += outcome.adopted_tokens
        return outcome

    def tag(self, node: CacheNode, owner: Hashable) -> None:
        """Record that program ``owner`` holds the path to ``node``: O(nodes newly tagged)."""
        while node is not self.root and not node.shared:
            if node.owners is None:
                node.owners = set()
            elif owner in node.owners:
                break  # and so is every node above it
            if len(node.owners) == self.max_owners:
                self._share(node)  # and every node above: they have all of its programs
                break
            node.owners.add(owner)
            self._owned.setdefault(owner, set()).add(node)
            if self.returns is not None:
                self._changed(node)
            parent = node.parent
            assert parent is not None, "tagged node is detached from the tree"
            node = parent

    def _share(self, node: CacheNode) -> None:
        while node is not self.root and not node.shared:
            self._untag(node)
            node.shared = True
            node.released = False
            self._changed(node)
            parent = node.parent
            assert parent is not None, "shared node is detached from the tree"
            node = parent

    def release(self, owner: Hashable) -> int:
        """Program ``owner`` will not come back: the resident nodes no other program holds go
        first on eviction (a later match or insert makes them ordinary again). Returns their
        tokens."""
        released = 0
        for node in _in_order(self._owned.pop(owner, ())):
            assert node.owners is not None
            node.owners.discard(owner)
            if node.owners:
                self._changed(node)  # its soonest program may be another now
                continue
            node.owners = None
            if node.value is not None:
                node.released = True
                released += len(node.key)
                self._changed(node)
        self.stats.released_tokens += released
        return released

    def _untag(self, node: CacheNode) -> None:
        for owner in node.owners or ():
            owned = self._owned[owner]
            owned.discard(node)
            if not owned:
                del self._owned[owner]
        node.owners = None

    def evict(self, num_tokens: int) -> list[Any]:
        """Free at least ``num_tokens`` (if possible), least cost over wait first
        (``_next_victim``); returns freed values."""
        now = self.clock()
        if self.returns is not None:
            self._follow_returns(now)
        freed: list[Any] = []
        count = 0
        # When each is back does not move during the call: the same few programs stay the
        # candidates until one has nothing left to evict.
        candidates: list[tuple[Hashable, float]] = []
        while count < num_tokens:
            node = self._next_victim(now, candidates)
            if node is None:
                break
            node = self._part_to_evict(node, num_tokens - count)
            count += len(node.key)
            freed.append(self.evict_node(node))
        return freed

    def _part_to_evict(self, node: CacheNode, need: int) -> CacheNode:
        """``node``, or where it is longer than the ``need`` left (whole granules) and the rest
        would stay long enough to keep, that many of its tokens split off: its head where the
        head costs less to recompute (a hole), else a leaf's tail."""
        need = -(-need // self.split_granule) * self.split_granule
        keep = len(node.key) - need
        if not self.split_evictions or keep < self.min_retained_tokens:
            return node
        head = self.cost.cost_per_token(node.start, node.start + need)
        tail = self.cost.cost_per_token(node.end - need, node.end)
        head_first = self.max_holes > 0 and head < tail
        if not head_first and node.children:
            return node
        self.stats.split_kept_tokens += keep
        upper = self._split(node, need if head_first else keep, self._namespace_of(node))
        return upper if head_first else node

    def _namespace_of(self, node: CacheNode) -> Hashable | None:
        """The namespace ``child_key`` gave ``node`` (SGLang's ``extra_key``), from its key."""
        first = node.ckey
        if isinstance(first, tuple) and (self.page_size == 1 or isinstance(first[-1], tuple)):
            return first[0]
        return None

    def _follow_returns(self, now: float) -> None:
        """Re-key the programs whose return moved: one entry each."""
        assert self.returns is not None
        changed = self.returns.changed(now)
        if not self._holding:
            if not self.returns.ready:
                return
            self._holding = True  # once: every owned node becomes held or stays as it is
            for nodes in list(self._owned.values()):
                for node in _in_order(nodes):
                    self._changed(node)
            # Their old entries are stale now: one pass here, not a drain of them all by one pop.
            self._compact_heap()
        for program in changed:
            key = self._program_key.get(program)
            if key is not None and -key[0] != self.returns.back_at(program):
                self._order_program(program)

    def _next_victim(
        self, now: float, candidates: list[tuple[Hashable, float]]
    ) -> CacheNode | None:
        """Pop the next node to evict: a released node, else the one that saves least recompute
        cost per token per second of expected wait, of the other nodes' top (waiting as long as
        it has been idle) and the cheapest node of each ``candidates`` program (program, back at);
        (re)filled with the programs expected back last when empty or one has none left."""
        free = self._top(self._heap)
        if free is not None and free[0] == -math.inf:
            return heapq.heappop(self._heap)[-1]
        best, best_program = self._cheapest_program(now, candidates)
        if best_program is not None and free is not None:
            node = free[-1]
            idle = _wait(now - node.last_access_time)
            if self.cost.cost_per_token(node.start, node.end) / idle <= best:
                best_program = None  # the other nodes' top goes first, ties included
        if best_program is None:
            return None if free is None else heapq.heappop(self._heap)[-1]
        return self._pop_held(best_program)

    def _cheapest_program(
        self, now: float, candidates: list[tuple[Hashable, float]]
    ) -> tuple[float, Hashable | None]:
        """Of the ``candidates`` programs (program, back at), (re)filled with the programs
        expected back last when empty or one has none left, the one whose cheapest node saves
        least recompute cost per token per second of expected wait: (that, program); (inf, None)
        when no program holds an evictable node."""
        tops = [(self._top(self._program_nodes.get(p, [])), p, back) for p, back in candidates]
        if not tops or any(top is None for top, _, _ in tops):
            candidates[:] = self._latest_programs(PROGRAM_CANDIDATES)
            tops = [(self._top(self._program_nodes[p]), p, back) for p, back in candidates]
        best, best_program = math.inf, None
        for top, program, back in tops:
            ratio = top[0] / _wait(back - now)
            if ratio < best:
                best, best_program = ratio, program
        return best, best_program

    def _pop_held(self, program: Hashable) -> CacheNode:
        """Take ``program``'s cheapest node and re-place the program by its next cheapest."""
        node = heapq.heappop(self._program_nodes[program])[-1]
        self._order_program(program)
        return node

    def _latest_programs(self, k: int) -> list[tuple[Hashable, float]]:
        """Up to ``k`` programs that hold an evictable node, expected back last first (cheapest
        node first among ties), each with when it is expected back. O(k log programs)."""
        order, found = self._program_order, []
        while order and len(found) < k:
            entry = heapq.heappop(order)
            program = entry[3]
            key = self._program_key.get(program)
            if key != entry[:2]:
                continue
            top = self._top(self._program_nodes.get(program, []))
            if top is None:
                del self._program_key[program]
                self._program_nodes.pop(program, None)
            elif top[0] != key[1]:  # its cheapest node went stale: a fresh entry follows
                self._order_program(program)
            else:
                found.append(entry)
        for entry in found:
            heapq.heappush(order, entry)
        return [(entry[3], -entry[0]) for entry in found]

    def _top(self, heap: list[Any]) -> tuple[Any, ...] | None:
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0] if heap else None

    def evict_node(self, node: CacheNode) -> Any:
        """Drop an evictable node's KV (a hole where it has children); returns its value."""
        assert self.is_evictable(node), f"{node} is not evictable"
        value, n = node.value, len(node.key)
        self.evictable_size -= n
        self.stats.evicted_tokens += n
        self.stats.evicted_nodes_digest = digest_of(
            self.stats.evicted_nodes_digest, node.node_id, n
        )
        if node.children:
            self.stats.interior_evicted_tokens += n
        node.value = None
        node.version += 1
        if not node.children:
            self._delete_dead_holes(node)
        return value

    def inc_lock(self, node: CacheNode) -> int:
        """Lock ``node`` and its ancestors; returns the change in evictable tokens."""
        delta = 0
        while node is not self.root:
            if node.lock_ref == 0 and node.value is not None:
                self.evictable_size -= len(node.key)
                self.protected_size += len(node.key)
                delta -= len(node.key)
            node.lock_ref += 1
            node.version += 1
            node = node.parent
            assert node is not None, "locked node is detached from the tree"
        return delta

    def dec_lock(self, node: CacheNode) -> int:
        """Unlock ``node`` and its ancestors; returns the change in evictable tokens."""
        delta = 0
        while node is not self.root:
            parent = node.parent
            assert parent is not None, "unlocked node is detached from the tree"
            assert node.lock_ref > 0, f"lock underflow on {node}"
            if node.lock_ref == 1 and node.value is not None:
                self.evictable_size += len(node.key)
                self.protected_size -= len(node.key)
                delta += len(node.key)
            node.lock_ref -= 1
            if node.lock_ref == 0 and node.value is None and not node.children:
                self._delete_dead_holes(node)
            else:
                self._changed(node)
            node = parent
        return delta

    # ----- inspection -----

    def iter_nodes(self) -> list[CacheNode]:
        out: list[CacheNode] = []
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def resident_values(self) -> list[Any]:
        return [n.value for n in self.iter_nodes() if n.value is not None]

    def resident_tokens(self) -> int:
        return sum(len(n.key) for n in self.iter_nodes() if n.value is not None)

    def hole_tokens(self) -> int:
        return sum(len(n.key) for n in self.iter_nodes() if n.value is None)


def _wait(seconds: float) -> float:
    """A wait as a divisor: one already over is the shortest there is."""
    return max(seconds, 1e-9)


def _in_order(nodes: Iterable[CacheNode]) -> list[CacheNode]:
    """Nodes by creation: a set's order follows addresses, which differ between TP ranks."""
    return sorted(nodes, key=lambda node: node.node_id)


def covered_tokens(ranges: Sequence[Range], cover: Sequence[Range]) -> int:
    """How many tokens of the disjoint ``ranges`` lie inside the disjoint ``cover``."""
    return sum(max(0, min(e, ce) - max(s, cs)) for s, e in ranges for cs, ce in cover)


def _overlaps(lo: int, hi: int, ranges: Sequence[Range]) -> bool:
    return any(s < hi and lo < e for s, e in ranges)
