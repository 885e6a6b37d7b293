"""Stateful fuzz of HoleAwareTree with requests in flight, a slot allocator and a reference model.

Each request mirrors the server's life cycle: match -> plan -> lock -> allocate slots for the
recompute ranges and the tail (evicting the shortfall first) -> insert with the plan's retained
ranges, free the duplicates, unlock; or abort. Several requests are in flight at once, so two of
them can recompute the same hole. Every slot records which token prefix its KV belongs to, so a
slot in the wrong place (or owned twice, or lost) fails an invariant.

Scale with ASYMCACHE_FUZZ_EXAMPLES (and ASYMCACHE_FUZZ_STEPS); the default is about 2,000 steps.
"""

from __future__ import annotations

import math
import os
import random
from array import array
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from asymcache_sglang.core.cost import StaticCostModel, eviction_key
from asymcache_sglang.core.programs import ProgramTracker
from asymcache_sglang.core.reuse import ReuseEstimator
from asymcache_sglang.core.tree import (
    PROGRAM_CANDIDATES,
    CacheNode,
    HoleAwareTree,
    SegmentPlan,
    covered_tokens,
)

EXAMPLES = int(os.environ.get("ASYMCACHE_FUZZ_EXAMPLES", "50"))
STEPS = int(os.environ.get("ASYMCACHE_FUZZ_STEPS", "40"))
MAX_IN_FLIGHT = 5
MAX_SEQ_LEN = 32

# Coverage counters over the whole run (read by a local driver; the test asserts some of them).
COVERAGE: dict[str, int] = {
    "steps": 0,
    "finished": 0,
    "aborted": 0,
    "starved": 0,
    "planned_holes": 0,
    "adopted_tokens": 0,
    "duplicate_tokens": 0,
    "hole_duplicate_tokens": 0,
    "interior_evicted_tokens": 0,
    "collected_holes": 0,
    "fallback_plans": 0,
    "chunked_requests": 0,
    "fitted_plans": 0,
    "multi_chunk_plans": 0,
    "closes": 0,
    "released_tokens": 0,
    "held_evictions": 0,
    "shared_nodes": 0,
    "split_kept_tokens": 0,
}


class SlotError(AssertionError):
    pass


class SlotPool:
    """N slot ids; free() raises on a double free or a slot that was never allocated."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free_set = set(range(size))

    def available(self) -> int:
        return len(self.free_set)

    def alloc(self, k: int) -> list[int]:
        if k > len(self.free_set):
            raise SlotError(f"pool exhausted: need {k}, have {len(self.free_set)}")
        return [self.free_set.pop() for _ in range(k)]

    def free(self, slots) -> None:
        for s in slots:
            if not 0 <= s < self.size:
                raise SlotError(f"free of unknown slot {s}")
            if s in self.free_set:
                raise SlotError(f"double free of slot {s}")
            self.free_set.add(s)


@dataclass
class Request:
    rid: int
    ns: str | None
    tokens: array
    plan: SegmentPlan
    row: list[int]
    owned: set[int] = field(default_factory=set)

    @property
    def locked(self) -> CacheNode:
        return self.plan.last_node


def flat(values) -> list[int]:
    return [s for v in values for s in v]


def reference_plan(flags: list[bool], max_holes: int, min_retained: int):
    """Token-level restatement of the plan rules: (retained, recompute, prefix_len)."""
    runs: list[list] = []
    for p, res in enumerate(flags):
        if runs and runs[-1][0] == res:
            runs[-1][2] = p + 1
        else:
            runs.append([res, p, p + 1])
    for i, run in enumerate(runs):
        if i > 0 and run[0] and run[2] - run[1] < min_retained:
            run[0] = False
    merged: list[list] = []
    for run in runs:
        if merged and merged[-1][0] == run[0]:
            merged[-1][2] = run[2]
        else:
            merged.append(list(run))
    while merged and not merged[-1][0]:
        merged.pop()
    retained, recompute = [], []
    for res, s, e in merged:
        if res:
            retained.append((s, e))
        elif len(recompute) < max_holes:
            recompute.append((s, e))
        else:
            break
    return retained, recompute, (retained[-1][1] if retained else 0)


def _ancestors(node: CacheNode) -> set[int]:
    out = set()
    while node.parent is not None:
        node = node.parent
        out.add(id(node))
    return out


class FakeClock:
    def __init__(self) -> None:
        self.t = 1.0

    def __call__(self) -> float:
        return self.t


class TreeMachine(RuleBasedStateMachine):
    @initialize(
        cost_b=st.sampled_from([1.0, 0.05, 0.0]),
        tau=st.sampled_from([1000.0, 50.0, 0.5]),
        share_boost=st.sampled_from([0.0, 1.0]),
        max_holes=st.sampled_from([2, 1, 3, 0]),
        min_retained=st.integers(1, 4),
        pool_size=st.integers(48, 160),
        sessions=st.lists(
            st.lists(st.integers(0, 3), min_size=4, max_size=12), min_size=1, max_size=4
        ),
        holds=st.booleans(),
        max_owners=st.sampled_from([1, 16]),
        page_size=st.sampled_from([1, 1, 2, 3]),
        split=st.booleans(),
        granule=st.sampled_from([1, 4]),
    )
    def setup(
        self,
        cost_b,
        tau,
        share_boost,
        max_holes,
        min_retained,
        pool_size,
        sessions,
        holds=False,
        max_owners=16,
        page_size=1,
        split=False,
        granule=1,
    ):
        self.clock = FakeClock()
        # Soft holds: programs tracked as the server does, estimated from the first return on.
        self.programs = ProgramTracker(self.clock, min_gaps=1) if holds else None
        self.tree = HoleAwareTree(
            StaticCostModel(1.0, cost_b),
            ReuseEstimator(tau, share_boost),
            max_holes=max_holes,
            min_retained_tokens=min_retained,
            clock=self.clock,
            returns=self.programs,
            max_owners=max_owners,
            page_size=page_size,
            split_evictions=split,
            split_granule_tokens=granule,
        )
        self.page = page_size
        self.pool = SlotPool(pool_size)
        self.sessions = sessions
        self.history = [list(x) for x in sessions]
        self.inflight: list[Request] = []
        self.next_rid = 0
        # Reference model: every inserted sequence (all its prefixes) per namespace, and what
        # each slot's KV encodes: the (namespace, token prefix) it was computed for.
        self.inserted_prefixes: set[tuple] = set()
        self.content: dict[int, tuple] = {}

    # ----- helpers -----

    def _sequence(self, session, ext, copy_of, *, advance=True):
        """A session's next turn (its last turn plus ``ext``), or a copy of an in-flight request."""
        if copy_of is not None and self.inflight:
            base = self.inflight[copy_of % len(self.inflight)]
            return base.ns, array("q", list(base.tokens) + ext)
        idx = session % len(self.sessions)
        tokens = self.history[idx] + ext
        if len(tokens) > MAX_SEQ_LEN:
            tokens = self.sessions[idx] + ext  # the session starts over from its system prompt
        if advance:
            self.history[idx] = tokens
        return ("ns" if session % 5 == 4 else None), array("q", tokens)

    def _free(self, slots) -> None:
        self.pool.free(slots)
        for s in slots:
            del self.content[s]

    def _evict(self, n: int) -> int:
        held = self._held_entries() if self.programs is not None else []
        above = {id(e[-1]): _ancestors(e[-1]) for e in held}
        before = self.tree.evictable_size
        kept = self.tree.stats.split_kept_tokens
        freed = flat(self.tree.evict(n))
        COVERAGE["split_kept_tokens"] += self.tree.stats.split_kept_tokens - kept
        self._free(freed)
        # Held KV goes in order: least cost per token per second of expected wait first (every
        # program here is among the tree's candidates), and within a program the cheapest token
        # first, so a held program's tail outlives its head.
        now = self.clock()
        for x in (h for h in held if h[-1].value is None):
            COVERAGE["held_evictions"] += 1
            for y in held:
                first = y[2] / max(-y[0] - now, 1e-9) < x[2] / max(-x[0] - now, 1e-9) or (
                    y[1] == x[1] and y[2:4] < x[2:4]
                )
                assert not first or y[-1].value is None, f"{x} went before {y}"
                if self.tree.cost.b > 0 and y[1] == x[1] and id(y[-1]) in above[id(x[-1])]:
                    assert y[-1].value is None, f"held tail {x[-1]} went before {y[-1]}"
        # At least n tokens unless the evictable set ran out.
        assert len(freed) <= before
        assert len(freed) >= min(n, before)
        if len(freed) < n:
            assert self.tree.evictable_size == 0
        return len(freed)

    def _held_entries(self) -> list[tuple]:
        """(-back, program, cost, -start, node) of each held node, once the programs that moved are
        re-keyed: a held node has one owner, whose entry has its return time now."""
        tree = self.tree
        tree.evict(0)
        assert len(tree._program_nodes) <= PROGRAM_CANDIDATES  # so the choice is exact here
        held = []
        for program, heap in tree._program_nodes.items():
            for entry in filter(tree._live, heap):
                node = entry[-1]
                assert node.owners == {program} and not node.released
                back = -tree._program_key[program][0]
                assert back == self.programs.back_at(program), f"{program} keyed stale"
                assert entry[:2] == (tree.cost.cost_per_token(node.start, node.end), -node.start)
                held.append((-back, program, entry[0], entry[1], node))
        for node in tree.iter_nodes():
            if tree.is_evictable(node) and tree._holder(node) is not None:
                assert any(h[-1] is node for h in held), f"held {node} not in its program's heap"
        return held

    def _program(self, req: Request) -> tuple:
        return (req.ns, req.rid % 2)

    def _aligned(self, n: int) -> int:
        return n - n % self.page

    def _check_plan(self, tokens, path, plan):
        pos = 0
        for node in path:
            assert node.start == pos and node.key == tokens[node.start : node.end]
            assert node.start % self.page == 0 and node.end % self.page == 0
            pos = node.end
        flags = [node.value is not None for node in path for _ in range(len(node.key))]
        retained, recompute, prefix_len = reference_plan(
            flags, self.tree.max_holes, self.tree.min_retained_tokens
        )
        assert (plan.retained, plan.recompute, plan.prefix_len) == (
            retained,
            recompute,
            prefix_len,
        )
        assert len(plan.recompute) <= self.tree.max_holes
        assert all(s == 0 or e - s >= self.tree.min_retained_tokens for s, e in plan.retained)
        if plan.retained:
            assert plan.last_node.end == plan.prefix_len and plan.last_node.value is not None
        else:
            assert plan.last_node is self.tree.root
        if plan.contiguous_len:
            assert plan.retained[0] == (0, plan.contiguous_len)
            assert plan.contiguous_node.end == plan.contiguous_len
        else:
            assert not plan.retained or plan.retained[0][0] > 0

    # ----- rules -----

    @precondition(lambda self: len(self.inflight) < MAX_IN_FLIGHT)
    @rule(
        session=st.integers(0, 4),
        ext=st.lists(st.integers(0, 3), max_size=8),
        copy_of=st.none() | st.integers(0, MAX_IN_FLIGHT),
    )
    def start(self, session, ext, copy_of):
        COVERAGE["steps"] += 1
        self._start(*self._sequence(session, ext, copy_of))

    @rule(session=st.integers(0, 4), ext=st.lists(st.integers(0, 3), max_size=8))
    def turn(self, session, ext):
        """A request that runs to completion before anything else happens."""
        COVERAGE["steps"] += 1
        if self._start(*self._sequence(session, ext, None)):
            self._finish(len(self.inflight) - 1)

    def _start(self, ns, tokens) -> bool:
        path = self.tree.match(tokens, ns)
        fallbacks = self.tree.stats.fallback_plans
        plan = self.tree.plan(path)
        COVERAGE["fallback_plans"] += self.tree.stats.fallback_plans - fallbacks
        self._check_plan(tokens, path, plan)
        self.tree.inc_lock(plan.last_node)

        need = plan.recompute_tokens + len(tokens) - plan.prefix_len
        shortfall = need - self.pool.available()
        if shortfall > 0:
            self._evict(shortfall)
        if need > self.pool.available():
            COVERAGE["starved"] += 1
            self.tree.dec_lock(plan.last_node)
            return False

        row: list[int | None] = [None] * len(tokens)
        for (s, e), values in zip(plan.retained, plan.retained_values, strict=True):
            slots = flat(values)
            assert len(slots) == e - s
            for p, slot in zip(range(s, e), slots, strict=True):
                assert self.content[slot] == (ns, tuple(tokens[: p + 1]))
                row[p] = slot
        missing = [p for p in range(len(tokens)) if row[p] is None]
        assert len(missing) == need
        assert {p for s, e in plan.recompute for p in range(s, e)} == {
            p for p in missing if p < plan.prefix_len
        }
        new = self.pool.alloc(need)
        for p, slot in zip(missing, new, strict=True):
            row[p] = slot
            self.content[slot] = (ns, tuple(tokens[: p + 1]))  # the request computes this KV
        COVERAGE["planned_holes"] += len(plan.recompute)
        self.inflight.append(Request(self.next_rid, ns, tokens, plan, row, set(new)))
        self.next_rid += 1
        if self.programs is not None:
            assert self.programs.admit(self._program(self.inflight[-1]), tokens) == (
                self._program(self.inflight[-1])
            )
        return True

    @precondition(lambda self: self.inflight)
    @rule(which=st.integers(0, MAX_IN_FLIGHT))
    def finish(self, which):
        COVERAGE["steps"] += 1
        self._finish(which)

    def _finish(self, which):
        req = self.inflight.pop(which % len(self.inflight))
        # The server inserts whole pages and frees the request's partial last page.
        aligned = self._aligned(len(req.tokens))
        out = self.tree.insert(req.tokens[:aligned], req.row[:aligned], req.plan.retained, req.ns)
        self._free(req.row[aligned:])
        dups = flat(out.duplicates)
        assert len(dups) == len(set(dups)) and set(dups) <= req.owned
        self._free(dups)
        path_slots = flat(out.path_values)
        assert len(path_slots) == aligned
        for p, slot in enumerate(path_slots):
            assert self.content[slot] == (req.ns, tuple(req.tokens[: p + 1]))
        assert out.last_node.end == aligned
        # Every request belongs to a program; two of them per namespace.
        self.tree.tag(out.last_node, self._program(req))
        self.tree.dec_lock(req.locked)
        if self.programs is not None:
            self.programs.release(self._program(req), req.tokens)
        for k in range(1, aligned + 1):
            self.inserted_prefixes.add((req.ns, tuple(req.tokens[:k])))
        COVERAGE["finished"] += 1
        COVERAGE["adopted_tokens"] += out.adopted_tokens
        COVERAGE["duplicate_tokens"] += len(dups)
        # A hole this request recomputed was filled by another request first.
        dup_set = set(dups)
        hole_duplicates = sum(
            req.row[p] in dup_set for s, e in req.plan.recompute for p in range(s, e)
        )
        COVERAGE["hole_duplicate_tokens"] += hole_duplicates
        # Every planned hole token was adopted into its hole or found refilled (the server's
        # planned_holes_adopted + planned_holes_refilled_first): none lands anywhere else.
        assert covered_tokens(req.plan.recompute, out.adopted_ranges) + hole_duplicates == sum(
            e - s for s, e in req.plan.recompute
        )

    @rule(
        session=st.integers(0, 4),
        ext=st.lists(st.integers(0, 3), max_size=8),
        chunk=st.integers(2, 12),
    )
    def chunked_turn(self, session, ext, chunk):
        """A request prefilled in chunks of ``chunk`` tokens, as the scheduler runs one.

        Each chunk re-matches, keeps the holes that fit (``SegmentPlan.fit``), computes them and
        then the contiguous run after the kept part up to the chunk, and inserts what is written
        so far with the request's prefix locked, as ``cache_unfinished_req`` does. Chunks are
        whole pages, and a plan keeps a page of the chunk for its tail.
        """
        COVERAGE["steps"] += 1
        chunk = max(self.page, self._aligned(chunk))
        ns, tokens = self._sequence(session, ext, None)
        locked, written, plan_chunks = self.tree.root, 0, 0
        self.tree.inc_lock(locked)
        while written < len(tokens):
            path = self.tree.match(tokens, ns)
            plan = self.tree.plan(path)
            self._check_plan(tokens, path, plan)
            assert plan.contiguous_len >= written, "a locked prefix lost its KV"
            fitted = plan
            if plan.recompute_tokens + len(tokens) - plan.prefix_len > chunk:
                fitted = plan.fit(chunk - self.page)
                self._check_fit(plan, fitted, chunk - self.page)
            if fitted is None or not fitted.has_holes:
                retained = [(0, plan.contiguous_len)] if plan.contiguous_len else []
                recompute, prefix, last = [], plan.contiguous_len, plan.contiguous_node
            else:
                retained, recompute = fitted.retained, fitted.recompute
                prefix, last = fitted.prefix_len, fitted.last_node
                COVERAGE["fitted_plans"] += fitted is not plan
            plan_chunks += bool(plan.recompute)
            self.tree.inc_lock(last)
            self.tree.dec_lock(locked)
            locked = last
            hole_tokens = sum(e - s for s, e in recompute)
            end = min(len(tokens), prefix + chunk - hole_tokens)
            work = [p for s, e in recompute for p in range(s, e)] + list(range(prefix, end))
            shortfall = len(work) - self.pool.available()
            if shortfall > 0:
                self._evict(shortfall)
            if len(work) > self.pool.available():
                COVERAGE["starved"] += 1
                self.tree.dec_lock(locked)
                return
            row: list[int | None] = [None] * end
            for (s, e), values in zip(retained, self._retained_values(plan, retained)):
                for p, slot in zip(range(s, e), values, strict=True):
                    assert self.content[slot] == (ns, tuple(tokens[: p + 1]))
                    row[p] = slot
            for p, slot in zip(work, self.pool.alloc(len(work)), strict=True):
                row[p] = slot
                self.content[slot] = (ns, tuple(tokens[: p + 1]))
            assert all(slot is not None for slot in row)
            # Only the last chunk can end inside a page; its partial page is freed.
            aligned = self._aligned(end)
            assert aligned == end or end == len(tokens)
            out = self.tree.insert(tokens[:aligned], row[:aligned], retained, ns)
            self._free(row[aligned:])
            self._free(flat(out.duplicates))
            assert out.last_node.end == aligned
            for k in range(1, aligned + 1):
                self.inserted_prefixes.add((ns, tuple(tokens[:k])))
            self.tree.inc_lock(out.last_node)
            self.tree.dec_lock(locked)
            locked, written = out.last_node, end
        self.tree.dec_lock(locked)
        COVERAGE["chunked_requests"] += 1
        COVERAGE["multi_chunk_plans"] += plan_chunks >= 2

    @staticmethod
    def _retained_values(plan, retained):
        """The slots of each of ``retained``, a leading part of ``plan.retained``."""
        flat_by_range = {r: flat(v) for r, v in zip(plan.retained, plan.retained_values)}
        return [flat_by_range[r] for r in retained]

    def _check_fit(self, plan, fitted, budget):
        """``fitted`` is the leading part of ``plan`` whose holes fit ``budget``."""
        sizes = [e - s for s, e in plan.recompute]
        kept = 0
        while kept < len(sizes) and sum(sizes[: kept + 1]) <= budget:
            kept += 1
        if kept == len(sizes):
            assert fitted is plan
            return
        if kept == 0:
            assert fitted is None
            return
        assert fitted.recompute == plan.recompute[:kept]
        cut = plan.recompute[kept][0]
        assert fitted.retained == [r for r in plan.retained if r[1] <= cut]
        assert fitted.prefix_len == cut and fitted.last_node.end == cut
        assert fitted.last_node is fitted.retained_nodes[-1]

    @precondition(lambda self: self.inflight)
    @rule(which=st.integers(0, MAX_IN_FLIGHT))
    def abort(self, which):
        COVERAGE["steps"] += 1
        req = self.inflight.pop(which % len(self.inflight))
        self._free(sorted(req.owned))
        self.tree.dec_lock(req.locked)
        if self.programs is not None:
            self.programs.leave(self._program(req))
        COVERAGE["aborted"] += 1

    @rule(n=st.integers(1, 8))
    def evict(self, n):
        COVERAGE["steps"] += 1
        interior = self.tree.stats.interior_evicted_tokens
        collected = self.tree.stats.collected_hole_nodes
        self._evict(n)
        COVERAGE["interior_evicted_tokens"] += self.tree.stats.interior_evicted_tokens - interior
        COVERAGE["collected_holes"] += self.tree.stats.collected_hole_nodes - collected

    @rule(session=st.integers(0, 4), ext=st.lists(st.integers(0, 3), max_size=8))
    def probe(self, session, ext):
        """A match without admission: touches and splits, like a request that waits."""
        COVERAGE["steps"] += 1
        ns, tokens = self._sequence(session, ext, None, advance=False)
        path = self.tree.match(tokens, ns)
        self._check_plan(tokens, path, self.tree.plan(path))

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 50.0]))
    def tick(self, dt):
        COVERAGE["steps"] += 1
        self.clock.t += dt
        self.tree.maybe_rekey()  # the server calls it after each match

    # ----- invariants -----

    @rule(ns=st.sampled_from([None, "a", "b"]), which=st.integers(0, 1))
    def close(self, ns, which):
        """A program's last step: what only it held goes first, nothing is freed or unlocked."""
        before = (self.tree.evictable_size, self.tree.protected_size)
        if self.programs is not None:
            self.programs.close((ns, which))
        COVERAGE["released_tokens"] += self.tree.release((ns, which))
        assert (self.tree.evictable_size, self.tree.protected_size) == before
        COVERAGE["closes"] += 1

    @invariant()
    def programs_are_consistent(self):
        tree = self.tree
        attached = {id(n) for n in tree.iter_nodes()}
        for owner, owned in tree._owned.items():
            assert owned, f"empty tag set for {owner}"
            for node in owned:
                assert id(node) in attached and node.owners and owner in node.owners
        for node in tree.iter_nodes():
            for owner in node.owners or ():
                assert node in tree._owned[owner]
            assert not (node.released and node.owners), "a released node still has owners"
            assert not (node.shared and node.owners), "a shared node still has owners"
            assert len(node.owners or ()) <= tree.max_owners
            COVERAGE["shared_nodes"] += node.shared

    @invariant()
    def tree_is_consistent(self):
        tree = self.tree
        nodes = tree.iter_nodes()
        assert tree.num_nodes == len(nodes) + 1
        assert tree.root.lock_ref == 1 and tree.root.value == []

        expected_locks: dict[int, int] = {}
        for req in self.inflight:
            node = req.locked
            while node is not tree.root:
                expected_locks[id(node)] = expected_locks.get(id(node), 0) + 1
                assert node.parent is not None, f"locked node {node} detached"
                node = node.parent

        live = {}
        held_entries = [e for heap in tree._program_nodes.values() for e in heap]
        for entry in tree._heap + held_entries:
            if entry[-2] == entry[-1].version:
                assert id(entry[-1]) not in live, "two live heap entries for one node"
                live[id(entry[-1])] = entry
        held_ids = {id(e) for e in held_entries}

        evictable = protected = 0
        tree_slots: list[int] = []
        prefix_of: dict[int, tuple] = {id(tree.root): ()}
        ns_of: dict[int, str | None] = {id(tree.root): None}
        stack = [tree.root]
        while stack:
            parent = stack.pop()
            for ck, node in parent.children.items():
                assert node.parent is parent and node.ckey == ck
                assert len(node.key) >= 1 and node.start == parent.end
                assert len(node.key) % self.page == 0 and node.start % self.page == 0
                ns = ns_of[id(parent)]
                if parent is tree.root:
                    ns = ck[0] if isinstance(ck, tuple) and isinstance(ck[0], str) else None
                ns_of[id(node)] = ns
                assert ck == tree.child_key(node.key, 0, ns)
                path = prefix_of[id(parent)] + tuple(node.key)
                prefix_of[id(node)] = path
                assert (ns, path) in self.inserted_prefixes, "tree holds tokens never inserted"
                assert node.lock_ref == expected_locks.get(id(node), 0)
                if node.value is None:
                    assert node.children, f"childless hole {node}"
                    assert tree.max_holes > 0, f"hole {node} in a tree that allows none"
                else:
                    assert len(node.value) == len(node.key)
                    for i, slot in enumerate(node.value):
                        assert self.content[slot] == (ns, path[: node.start + i + 1])
                    tree_slots.extend(node.value)
                    if node.lock_ref:
                        protected += len(node.key)
                    elif tree.max_holes == 0 and node.children:
                        # Without holes only leaves may go: an interior node has no live entry.
                        evictable += len(node.key)
                        assert id(node) not in live, f"interior {node} evictable without holes"
                    else:
                        evictable += len(node.key)
                        entry = live.get(id(node))
                        assert entry is not None, f"evictable {node} missing from the heap"
                        if id(entry) not in held_ids:  # held ones: before each eviction
                            key = -math.inf if node.released else eviction_key(
                                tree.cost, tree.reuse, tree._key_tau, node.start, node.end,
                                node.last_access_time, len(node.children),
                            )  # fmt: skip
                            assert entry[0] == key and entry[1] == -node.start
                stack.append(node)
        assert (tree.evictable_size, tree.protected_size) == (evictable, protected)
        assert evictable + protected == tree.resident_tokens()

        # Every slot has exactly one owner: the pool, the tree, or one in-flight request.
        owners = [self.pool.free_set, set(tree_slots)] + [r.owned for r in self.inflight]
        assert len(tree_slots) == len(owners[1])
        assert sum(len(o) for o in owners) == self.pool.size
        assert set().union(*owners) == set(range(self.pool.size))
        assert set(self.content) == set(range(self.pool.size)) - self.pool.free_set

    def teardown(self):
        # Drain: abort or finish what is in flight, then everything must be evictable.
        if not hasattr(self, "tree"):
            return
        while self.inflight:
            self._finish(0)
        self.tree_is_consistent()
        self._evict(10**9)
        assert self.tree.num_nodes == 1 and self.tree.resident_tokens() == 0
        assert self.pool.available() == self.pool.size


TreeMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestTreeMachine = TreeMachine.TestCase


def seeded_machine(
    rng: random.Random,
    *,
    max_holes: list[int],
    min_retained: tuple[int, int],
    pool: tuple[int, int],
    holds: bool = False,
    page_size: int = 1,
    split: bool = False,
    granule: int = 1,
) -> TreeMachine:
    """A machine set up from ``rng``: hole bound, retained-island bound and pool from the ranges."""
    m = TreeMachine()
    m.setup(
        cost_b=rng.choice([1.0, 0.05, 0.0]),
        tau=rng.choice([1000.0, 50.0, 0.5]),
        share_boost=rng.choice([0.0, 1.0]),
        max_holes=rng.choice(max_holes),
        min_retained=rng.randint(*min_retained),
        pool_size=rng.randint(*pool),
        sessions=[
            [rng.randrange(4) for _ in range(rng.randint(4, 12))] for _ in range(rng.randint(1, 4))
        ],
        holds=holds,
        max_owners=rng.choice([1, 16]) if holds else 16,
        page_size=page_size,
        split=split,
        granule=granule,
    )
    return m


def assert_gained(before: dict[str, int], *keys: str) -> None:
    """Each of ``keys`` in COVERAGE grew since ``before``: the walk reached what it is for."""
    gained = {k: COVERAGE[k] - before[k] for k in COVERAGE}
    for key in keys:
        assert gained[key] > 0, (key, gained)


def random_step(m: TreeMachine, rng: random.Random, actions: list[str]) -> None:
    """One step of a seeded walk: an action drawn from ``actions``, with its arguments."""
    ext = [rng.randrange(4) for _ in range(rng.randint(0, 8))]
    which = rng.randrange(MAX_IN_FLIGHT + 1)
    action = rng.choice(actions)
    if action == "start" and len(m.inflight) < MAX_IN_FLIGHT:
        m.start(rng.randrange(5), ext, rng.choice([None, which]))
    elif action == "turn":
        m.turn(rng.randrange(5), ext)
    elif action == "chunked":
        m.chunked_turn(rng.randrange(5), ext, rng.randint(2, 16))
    elif action in ("finish", "abort") and m.inflight:
        getattr(m, action)(which)
    elif action == "evict":
        m.evict(rng.randint(1, 8))
    elif action == "probe":
        m.probe(rng.randrange(5), ext)
    elif action == "tick":
        m.tick(rng.choice([0.5, 1.0, 3.0, 50.0]))


@pytest.mark.parametrize("holds", [False, True])
def test_seeded_random_walk_reaches_holes(holds):
    """The same machine driven by a seeded random walk: deterministic coverage of hole paths,
    with and without soft holds."""
    rng = random.Random(20240611)
    closer = random.Random(7)
    before = dict(COVERAGE)
    for _ in range(60):
        # 0: leaf-only eviction; 1 makes paths with more holes than allowed (fallbacks) common.
        m = seeded_machine(
            rng, max_holes=[0, 1, 1, 2, 3], min_retained=(1, 4), pool=(48, 160), holds=holds
        )
        for _ in range(40):
            random_step(m, rng, ["start", "turn", "finish", "abort", "evict", "probe", "tick"])
            # Programs close on a stream of their own, so the walk above stays as it was.
            if closer.random() < 0.1:
                m.close(closer.choice([None, "a", "b"]), closer.randrange(2))
            m.tree_is_consistent()
            m.programs_are_consistent()
        m.teardown()
    assert_gained(
        before,
        "released_tokens",
        "planned_holes",
        "adopted_tokens",
        "duplicate_tokens",
        "hole_duplicate_tokens",
        "interior_evicted_tokens",
        "collected_holes",
        "aborted",
        "starved",
        # A held program loses its head first, so paths with more holes than allowed are rare.
        *(("held_evictions", "shared_nodes") if holds else ("fallback_plans",)),
    )


@pytest.mark.parametrize("holds", [False, True])
def test_seeded_walk_with_split_evictions(holds):
    """Evictions that take part of a node, among everything else: holes, plans and held
    programs' order stay as they were."""
    rng = random.Random(20261207)
    before = dict(COVERAGE)
    for _ in range(40):
        m = seeded_machine(
            rng, max_holes=[0, 1, 2, 3], min_retained=(1, 4), pool=(48, 160), holds=holds,
            page_size=rng.choice([1, 2]), split=True, granule=rng.choice([1, 4]),
        )  # fmt: skip
        for _ in range(40):
            random_step(m, rng, ["start", "turn", "chunked", "finish", "abort", "evict", "tick"])
            m.tree_is_consistent()
            m.programs_are_consistent()
        m.teardown()
    assert_gained(
        before, "split_kept_tokens", "planned_holes", "adopted_tokens", "interior_evicted_tokens",
        "collected_holes", *(("held_evictions",) if holds else ()),
    )  # fmt: skip


def test_seeded_chunked_walk_carries_plans_over_chunks():
    """Chunked requests among the others: plans cut to the chunk, and carried over several."""
    rng = random.Random(20261201)
    before = dict(COVERAGE)
    for _ in range(30):
        # Paths with several holes: short retained islands count, small pools evict often.
        m = seeded_machine(rng, max_holes=[2, 3], min_retained=(1, 1), pool=(32, 96))
        for _ in range(80):
            ext = [rng.randrange(4) for _ in range(rng.randint(0, 8))]
            action = rng.choice(["turn", "chunked", "chunked", "evict", "evict", "tick"])
            if action == "turn":
                m.turn(rng.randrange(5), ext)
            elif action == "chunked":
                m.chunked_turn(rng.randrange(5), ext, rng.randint(2, 12))
            elif action == "evict":
                m.evict(rng.randint(1, 8))
            else:
                m.tick(rng.choice([0.5, 1.0, 3.0, 50.0]))
            m.tree_is_consistent()
        m.teardown()
    assert_gained(before, "chunked_requests", "fitted_plans", "multi_chunk_plans", "adopted_tokens")


@pytest.mark.parametrize("page_size", [2, 4])
def test_seeded_paged_walk_keeps_holes_and_plans_on_pages(page_size):
    """Pages of 2 and 4 tokens: every node, hole and plan range stays on page boundaries
    (checked on every step), and holes are still made, planned, chunked and adopted."""
    rng = random.Random(20261207 + page_size)
    before = dict(COVERAGE)
    for _ in range(40):
        m = seeded_machine(
            rng, max_holes=[2, 3], min_retained=(1, 1), pool=(32, 96), page_size=page_size
        )
        for _ in range(80):
            random_step(m, rng, ["start", "turn", "chunked", "chunked", "finish", "abort", "evict"])
            m.tree_is_consistent()
        m.teardown()
    assert_gained(
        before,
        "planned_holes",
        "adopted_tokens",
        "interior_evicted_tokens",
        "chunked_requests",
        "fitted_plans",
        "multi_chunk_plans",
    )
