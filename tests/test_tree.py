"""Unit tests for the pure-Python core: HoleAwareTree, SegmentPlan, StaticCostModel, ReuseEstimator.

Values are Python lists of ints (slot ids); time comes from a fake clock.
"""

from __future__ import annotations

import math
import random
import time as real_time
from array import array

import pytest

from asymcache_sglang.core.cost import StaticCostModel, eviction_key
from asymcache_sglang.core.reuse import ReuseEstimator
from asymcache_sglang.core.tree import HoleAwareTree, _common_prefix_len, covered_tokens


class FakeClock:
    def __init__(self, t: float = 1.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float = 1.0) -> None:
        self.t += dt


def toks(xs) -> array:
    return array("q", xs)


def make_tree(
    *,
    a=1.0,
    b=0.0,
    tau=1000.0,
    share_boost=0.0,
    max_holes=8,
    min_retained=1,
    clock=None,
    split=False,
    granule=1,
):
    """A tree that evicts whole nodes unless ``split`` (then in granules of ``granule`` tokens):
    each ``evict`` of the tests that do not split names one node."""
    clock = clock or FakeClock()
    tree = HoleAwareTree(
        StaticCostModel(a, b),
        ReuseEstimator(tau, share_boost),
        max_holes=max_holes,
        min_retained_tokens=min_retained,
        clock=clock,
        split_evictions=split,
        split_granule_tokens=granule,
    )
    return tree, clock


def flat(values) -> list[int]:
    return [s for v in values for s in v]


def walk(tree, tokens, ns=None):
    """Nodes along ``tokens`` without touching or splitting anything: (node, lo, hi) per node."""
    node, pos, out = tree.root, 0, []
    while pos < len(tokens):
        child = node.children.get(tree.child_key(tokens, pos, ns))
        if child is None:
            break
        n = 0
        while n < len(child.key) and pos + n < len(tokens) and child.key[n] == tokens[pos + n]:
            n += 1
        out.append((child, pos, pos + n))
        if n < len(child.key):
            break
        pos += n
        node = child
    return out


def layout(tree, tokens, ns=None):
    """[(start, end, 'R'|'H')] of the nodes along ``tokens``."""
    return [(lo, hi, "H" if n.value is None else "R") for n, lo, hi in walk(tree, tokens, ns)]


def resident_positions(tree, tokens, ns=None) -> set[int]:
    return {p for n, lo, hi in walk(tree, tokens, ns) if n.value is not None for p in range(lo, hi)}


def check_counters(tree):
    nodes = tree.iter_nodes()
    assert tree.num_nodes == len(nodes) + 1
    ev = sum(len(n.key) for n in nodes if n.value is not None and n.lock_ref == 0)
    pr = sum(len(n.key) for n in nodes if n.value is not None and n.lock_ref > 0)
    assert (tree.evictable_size, tree.protected_size) == (ev, pr)
    assert ev + pr == tree.resident_tokens()


SEQ30 = list(range(100, 130))


def three_nodes_equal_time(b=1.0, **kw):
    """One 30-token sequence split into [0,10) [10,20) [20,30), all with the same access time."""
    tree, clock = make_tree(b=b, **kw)
    tree.insert(toks(SEQ30), list(range(30)), [])
    tree.match(toks(SEQ30[:10]))
    tree.match(toks(SEQ30[:20]))
    assert layout(tree, SEQ30) == [(0, 10, "R"), (10, 20, "R"), (20, 30, "R")]
    return tree, clock


# ----- interior eviction and plans -----


def test_interior_eviction_creates_hole_and_plan_ranges():
    tree, clock = three_nodes_equal_time()
    freed = tree.evict(1)
    assert freed == [list(range(10))]  # the cheapest (head) node goes, although it is interior
    assert layout(tree, SEQ30) == [(0, 10, "H"), (10, 20, "R"), (20, 30, "R")]
    assert tree.stats.interior_evicted_tokens == 10
    assert tree.hole_tokens() == 10 and tree.resident_tokens() == 20
    assert tree.num_nodes == 4
    check_counters(tree)

    request = SEQ30 + [7, 7, 7, 7, 7]
    path = tree.match(toks(request))
    assert [(n.start, n.end) for n in path] == [(0, 10), (10, 20), (20, 30)]
    plan = tree.plan(path)
    assert plan.retained == [(10, 30)]
    # One list per retained range, one value per node in it.
    assert plan.retained_values == [[list(range(10, 20)), list(range(20, 30))]]
    assert plan.recompute == [(0, 10)]
    assert plan.prefix_len == 30 and plan.last_node is path[-1]
    assert plan.has_holes and plan.recompute_tokens == 10 and plan.retained_tokens == 20
    assert plan.contiguous_len == 0 and plan.contiguous_node is tree.root
    # The tail the request computes is [prefix_len, len(request)).
    assert len(request) - plan.prefix_len == 5


def test_hole_in_the_middle_and_trailing_hole_is_tail():
    # tau=1 and clock jumps of 100 let recency dominate the position cost.
    tree, clock = make_tree(b=1.0, tau=1.0)
    tree.insert(toks(SEQ30), list(range(30)), [])
    tree.match(toks(SEQ30[:10]))
    tree.match(toks(SEQ30[:20]))
    clock.advance(100)
    tree.match(toks(SEQ30[:10]))  # the head is hot, the middle is the cheapest now
    assert tree.evict(1) == [list(range(10, 20))]
    assert layout(tree, SEQ30) == [(0, 10, "R"), (10, 20, "H"), (20, 30, "R")]

    plan = tree.plan(tree.match(toks(SEQ30)))
    assert plan.retained == [(0, 10), (20, 30)]
    assert plan.retained_values == [[list(range(10))], [list(range(20, 30))]]
    assert plan.recompute == [(10, 20)]
    assert plan.prefix_len == 30
    assert plan.contiguous_len == 10 and plan.contiguous_node.end == 10

    # A request that diverges inside the hole: the hole part is tail, not a recompute range.
    other = SEQ30[:15] + [1, 2, 3]
    path = tree.match(toks(other))
    assert [(n.start, n.end, n.value is None) for n in path] == [(0, 10, False), (10, 15, True)]
    plan = tree.plan(path)
    assert plan.retained == [(0, 10)] and plan.recompute == []
    assert plan.prefix_len == 10 and not plan.has_holes
    check_counters(tree)


def test_fit_keeps_the_holes_that_fit_and_ends_before_the_first_left_out():
    tree, _ = make_tree()
    seq = list(range(200, 260))
    tree.insert(toks(seq), list(range(60)), [])
    for cut in (5, 15, 20, 32, 40):
        tree.match(toks(seq[:cut]))
    path = tree.match(toks(seq + [1, 2]))
    assert [(n.start, n.end) for n in path] == [
        (0, 5), (5, 15), (15, 20), (20, 32), (32, 40), (40, 60)
    ]  # fmt: skip
    for node in path[0::2]:
        node.value = None  # holes at [0, 5), [15, 20), [32, 40); only the plan reads them
    plan = tree.plan(path)
    assert plan.recompute == [(0, 5), (15, 20), (32, 40)]
    assert plan.retained == [(5, 15), (20, 32), (40, 60)]
    assert plan.retained_nodes == [path[1], path[3], path[5]]

    assert plan.fit(18) is plan and plan.fit(100) is plan  # every hole fits
    assert plan.fit(4) is None  # not even the first
    two = plan.fit(17)  # 5 + 5 fit, the 8-token third does not
    assert two.recompute == [(0, 5), (15, 20)] and two.recompute_tokens == 10
    assert two.retained == [(5, 15), (20, 32)] and two.retained_nodes == [path[1], path[3]]
    assert two.retained_values == plan.retained_values[:2]
    assert two.prefix_len == 32 and two.last_node is path[3]  # the extend after starts at the hole
    one = plan.fit(9)
    assert one.recompute == [(0, 5)] and one.retained == [(5, 15)] and one.prefix_len == 15
    assert (one.contiguous_len, one.contiguous_node) == (plan.contiguous_len, plan.contiguous_node)


def test_plan_on_empty_path_is_empty():
    tree, _ = make_tree()
    plan = tree.plan(tree.match(toks([1, 2, 3])))
    assert plan.prefix_len == 0 and plan.retained == [] and plan.recompute == []
    assert plan.last_node is tree.root and plan.contiguous_node is tree.root


# ----- insert: adoption and duplicates -----


class TrackingAllocator:
    """Slot ids handed out once; free() raises on double free or an unknown slot."""

    def __init__(self, first: int) -> None:
        self.next = first
        self.live: set[int] = set()
        self.freed: set[int] = set()

    def alloc(self, k: int) -> list[int]:
        out = list(range(self.next, self.next + k))
        self.next += k
        self.live.update(out)
        return out

    def free(self, slots) -> None:
        for s in slots:
            if s in self.freed:
                raise AssertionError(f"double free of slot {s}")
            if s not in self.live:
                raise AssertionError(f"free of unallocated slot {s}")
            self.live.discard(s)
            self.freed.add(s)


def start_request(tree, alloc, tokens):
    plan = tree.plan(tree.match(toks(tokens)))
    tree.inc_lock(plan.last_node)
    row = [None] * len(tokens)
    for (s, e), vals in zip(plan.retained, plan.retained_values, strict=True):
        row[s:e] = flat(vals)
    missing = [p for p in range(len(tokens)) if row[p] is None]
    for p, slot in zip(missing, alloc.alloc(len(missing)), strict=True):
        row[p] = slot
    return plan, row, set(row[p] for p in missing)


def test_hole_adoption_on_insert():
    tree, _ = three_nodes_equal_time()
    tree.evict(1)
    alloc = TrackingAllocator(1000)
    request = SEQ30 + [7, 7, 7, 7, 7]
    plan, row, owned = start_request(tree, alloc, request)
    assert row[:10] == list(range(1000, 1010)) and row[10:30] == list(range(10, 30))
    assert tree.protected_size == 20 and tree.evictable_size == 0

    out = tree.insert(toks(request), row, plan.retained)
    assert out.duplicates == [] and out.adopted_tokens == 10
    assert tree.stats.adopted_hole_tokens == 10
    assert flat(out.path_values) == row
    assert layout(tree, request) == [(0, 10, "R"), (10, 20, "R"), (20, 30, "R"), (30, 35, "R")]
    # The adopted hole sits under the request's lock: protected until dec_lock.
    assert tree.protected_size == 30 and tree.evictable_size == 5
    tree.dec_lock(plan.last_node)
    assert tree.protected_size == 0 and tree.evictable_size == 35
    assert sorted(flat(tree.resident_values())) == sorted(range(10, 30)) + sorted(owned)
    check_counters(tree)


@pytest.mark.parametrize("same_tail", [False, True])
def test_two_requests_recompute_the_same_hole(same_tail):
    tree, _ = three_nodes_equal_time()
    tree.evict(1)
    alloc = TrackingAllocator(1000)
    req_a = SEQ30 + [7, 7, 7]
    req_b = SEQ30 + ([7, 7, 7] if same_tail else [8, 8])
    plan_a, row_a, owned_a = start_request(tree, alloc, req_a)
    plan_b, row_b, owned_b = start_request(tree, alloc, req_b)
    assert plan_a.recompute == plan_b.recompute == [(0, 10)]
    assert owned_a.isdisjoint(owned_b)

    out_a = tree.insert(toks(req_a), row_a, plan_a.retained)
    assert out_a.duplicates == [] and out_a.adopted_tokens == 10
    # The server's accounting of planned holes: A adopted its whole hole, B found it refilled.
    assert out_a.adopted_ranges == [(0, 10)]
    assert covered_tokens(plan_a.recompute, out_a.adopted_ranges) == 10
    alloc.free(flat(out_a.duplicates))
    tree.dec_lock(plan_a.last_node)

    out_b = tree.insert(toks(req_b), row_b, plan_b.retained)
    dup_b = flat(out_b.duplicates)
    assert out_b.adopted_tokens == 0 and out_b.adopted_ranges == []
    assert covered_tokens(plan_b.recompute, out_b.adopted_ranges) == 0
    expected = row_b[:10] + (row_b[30:] if same_tail else [])
    assert dup_b == expected and len(set(dup_b)) == len(dup_b)
    assert set(dup_b) <= owned_b
    alloc.free(dup_b)  # raises on a double free
    tree.dec_lock(plan_b.last_node)
    assert tree.stats.duplicate_recompute_tokens == len(expected)

    # Every slot either lives in the tree (once) or was freed once: nothing leaked.
    in_tree = flat(tree.resident_values())
    assert len(in_tree) == len(set(in_tree))
    assert set(in_tree) | alloc.freed == set(range(10, 30)) | owned_a | owned_b
    assert set(in_tree).isdisjoint(alloc.freed)
    assert alloc.live == set(in_tree) - set(range(10, 30))
    assert tree.protected_size == 0
    check_counters(tree)

    # Evicting everything returns each tree slot exactly once.
    everything = flat(tree.evict(10**6))
    assert sorted(everything) == sorted(in_tree)
    assert tree.num_nodes == 1 and tree.evictable_size == 0


def test_insert_existing_resident_returns_caller_slots_as_duplicates():
    tree, _ = make_tree()
    tree.insert(toks([1, 2, 3, 4]), [10, 11, 12, 13], [])
    out = tree.insert(toks([1, 2, 3, 4, 5]), [20, 21, 22, 23, 24], [(0, 2)])
    # [0,2) is retained (already the tree's); [2,4) are duplicates; [4,5) is a new leaf.
    assert out.duplicates == [[22, 23]]
    assert flat(out.path_values) == [10, 11, 12, 13, 24]
    assert tree.evictable_size == 5
    check_counters(tree)


def test_namespaces_do_not_share():
    tree, _ = make_tree()
    tree.insert(toks([1, 2, 3]), [0, 1, 2], [], "x")
    assert tree.match(toks([1, 2, 3])) == []
    assert len(tree.match(toks([1, 2, 3]), "x")) == 1
    out = tree.insert(toks([1, 2, 3]), [5, 6, 7], [])
    assert out.duplicates == [] and tree.evictable_size == 6


# ----- garbage collection of holes -----


def test_evicting_deepest_resident_deletes_hole_chain():
    tree, _ = three_nodes_equal_time()
    assert tree.evict(1) == [list(range(10))]
    assert tree.evict(1) == [list(range(10, 20))]
    assert layout(tree, SEQ30) == [(0, 10, "H"), (10, 20, "H"), (20, 30, "R")]
    assert tree.num_nodes == 4
    assert tree.evict(1) == [list(range(20, 30))]
    assert tree.num_nodes == 1 and tree.root.children == {}
    assert tree.stats.collected_hole_nodes == 3
    assert tree.hole_tokens() == 0 and tree.resident_tokens() == 0
    check_counters(tree)


def test_hole_with_another_resident_branch_survives():
    tree, _ = make_tree(b=1.0)
    tree.insert(toks([1] * 10 + [2] * 10), list(range(20)), [])
    tree.insert(toks([1] * 10 + [3] * 10), list(range(90, 110)), [(0, 10)])
    assert tree.num_nodes == 4
    assert tree.evict(1) == [list(range(10))]  # the shared head
    assert tree.evict(1) == [list(range(10, 20))]  # one branch: the hole still has a child
    assert tree.num_nodes == 3 and tree.hole_tokens() == 10
    assert layout(tree, [1] * 10 + [3] * 10) == [(0, 10, "H"), (10, 20, "R")]
    assert tree.evict(1) == [list(range(100, 110))]
    assert tree.num_nodes == 1
    check_counters(tree)


def test_unlock_then_interior_hole_then_chain_collected():
    tree, _ = three_nodes_equal_time()
    path = tree.match(toks(SEQ30[:20]))
    tree.inc_lock(path[-1])  # locks [10,20) and [0,10)
    assert tree.evict(1) == [list(range(20, 30))]  # only the unlocked leaf can go
    assert tree.num_nodes == 3
    tree.dec_lock(path[-1])
    assert tree.evict(1) == [list(range(10))]  # head is the cheapest again: interior hole
    assert tree.evict(1) == [list(range(10, 20))]  # last resident node: the chain goes
    assert tree.num_nodes == 1
    check_counters(tree)


# ----- hole bounds -----

# [0,10) [10,20) [20,25) [25,35) [35,45) [45,55) [55,70): islands of 5, 10 and 15 tokens.
CUTS = [10, 20, 25, 35, 45, 55, 70]
SEQ70 = list(range(500, 570))


def alternating_tree(**kw):
    """R H R H R H R along SEQ70: holes at [10,20), [25,35), [45,55)."""
    tree, clock = make_tree(b=1.0, tau=1.0, **kw)
    tree.insert(toks(SEQ70), list(range(70)), [])
    for cut in CUTS[:-1]:
        tree.match(toks(SEQ70[:cut]))
    for hot, hole in ((10, (10, 20)), (25, (25, 35)), (45, (45, 55))):
        clock.advance(100)
        tree.match(toks(SEQ70[:hot]))
        assert tree.evict(1) == [list(range(*hole))]
    assert layout(tree, SEQ70) == [
        (0, 10, "R"), (10, 20, "H"), (20, 25, "R"), (25, 35, "H"),
        (35, 45, "R"), (45, 55, "H"), (55, 70, "R"),
    ]  # fmt: skip
    return tree, clock


def test_no_holes_means_leaf_only_eviction():
    tree, clock = make_tree(b=1.0, tau=1.0, max_holes=0)
    tree.insert(toks(SEQ70), list(range(70)), [])
    tree.match(toks(SEQ70[:10]))
    clock.advance(100)
    tree.match(toks(SEQ70[:10]))  # the head is hot, the cheap-to-drop choice would be it
    # Position-aware cost would pick the head [0,10) if holes were allowed; here only the leaf.
    assert tree.evict(1) == [list(range(10, 70))]
    assert layout(tree, SEQ70[:10]) == [(0, 10, "R")]
    assert tree.hole_tokens() == 0 and tree.stats.interior_evicted_tokens == 0
    assert tree.evict(1) == [list(range(10))]
    assert tree.num_nodes == 1 and tree.evictable_size == 0


@pytest.mark.parametrize(
    ("max_holes", "retained", "recompute", "prefix_len"),
    [
        (0, [(0, 10)], [], 10),
        (1, [(0, 10), (20, 25)], [(10, 20)], 25),
        (2, [(0, 10), (20, 25), (35, 45)], [(10, 20), (25, 35)], 45),
        (3, [(0, 10), (20, 25), (35, 45), (55, 70)], [(10, 20), (25, 35), (45, 55)], 70),
        (8, [(0, 10), (20, 25), (35, 45), (55, 70)], [(10, 20), (25, 35), (45, 55)], 70),
    ],
)
def test_max_holes_bound(max_holes, retained, recompute, prefix_len):
    tree, _ = alternating_tree()
    # Set after building: a tree created with max_holes=0 never makes holes (next test).
    tree.max_holes = max_holes
    path = tree.match(toks(SEQ70))
    fallbacks = tree.stats.fallback_plans
    plan = tree.plan(path)
    assert plan.retained == retained and plan.recompute == recompute
    assert plan.prefix_len == prefix_len
    assert plan.last_node.end == prefix_len and plan.last_node.value is not None
    assert len(plan.recompute) <= max_holes
    assert [len(flat(v)) for v in plan.retained_values] == [e - s for s, e in plan.retained]
    assert tree.stats.fallback_plans == fallbacks + (max_holes < 3)


def test_max_holes_with_leading_hole():
    tree, clock = make_tree(b=1.0, tau=1.0, max_holes=1)
    tree.insert(toks(SEQ30), list(range(30)), [])
    tree.match(toks(SEQ30[:10]))
    tree.match(toks(SEQ30[:20]))
    tree.evict(1)  # head [0,10)
    clock.advance(100)
    tree.match(toks(SEQ30[:10]))  # [0,10) hole and hot; [10,20) and [20,30) older
    tree.match(toks(SEQ30[:15]))  # splits [10,20) into [10,15) hot and [15,20) old
    assert tree.evict(1) == [list(range(15, 20))]
    assert layout(tree, SEQ30) == [(0, 10, "H"), (10, 15, "R"), (15, 20, "H"), (20, 30, "R")]
    plan = tree.plan(tree.match(toks(SEQ30)))
    assert plan.recompute == [(0, 10)] and plan.retained == [(10, 15)]
    assert plan.prefix_len == 15 and plan.contiguous_len == 0


@pytest.mark.parametrize(
    ("min_retained", "retained", "recompute"),
    [
        (5, [(0, 10), (20, 25), (35, 45), (55, 70)], [(10, 20), (25, 35), (45, 55)]),
        (6, [(0, 10), (35, 45), (55, 70)], [(10, 35), (45, 55)]),
        (11, [(0, 10), (55, 70)], [(10, 55)]),
        (16, [(0, 10)], []),  # every island is short; the leading run is no island
    ],
)
def test_short_retained_islands_become_recompute(min_retained, retained, recompute):
    tree, _ = alternating_tree(min_retained=min_retained)
    plan = tree.plan(tree.match(toks(SEQ70)))
    assert plan.retained == retained and plan.recompute == recompute
    assert plan.prefix_len == retained[-1][1]


def test_short_island_slots_are_duplicates_and_holes_adopted():
    tree, _ = alternating_tree(min_retained=6)
    alloc = TrackingAllocator(1000)
    plan, row, owned = start_request(tree, alloc, SEQ70)
    assert plan.recompute == [(10, 35), (45, 55)]
    out = tree.insert(toks(SEQ70), row, plan.retained)
    assert out.duplicates == [row[20:25]]  # the 5-token island is resident
    assert out.adopted_tokens == 30  # the three holes
    alloc.free(flat(out.duplicates))
    tree.dec_lock(plan.last_node)
    assert tree.hole_tokens() == 0 and tree.resident_tokens() == 70
    assert {p for p in range(70) if row[p] < 1000} == set(range(10)) | set(range(35, 45)) | set(
        range(55, 70)
    )  # retained positions use the tree's slots
    was_resident = set(range(10)) | set(range(20, 25)) | set(range(35, 45)) | set(range(55, 70))
    in_tree = set(flat(tree.resident_values()))
    assert in_tree == (was_resident | owned) - alloc.freed
    assert alloc.freed == set(row[20:25]) and alloc.freed <= owned
    check_counters(tree)


# ----- locks -----


def test_locks_protect_and_move_counters():
    tree, _ = three_nodes_equal_time()
    path = tree.match(toks(SEQ30[:10]))
    head = path[-1]
    assert tree.inc_lock(head) == -10
    assert (tree.evictable_size, tree.protected_size) == (20, 10)
    # The head is the cheapest node but locked: the next cheapest interior node goes instead.
    assert tree.evict(1) == [list(range(10, 20))]
    assert tree.evict(100) == [list(range(20, 30))]
    assert tree.evict(100) == []
    assert head.value == list(range(10)) and head.lock_ref == 1
    assert (tree.evictable_size, tree.protected_size) == (0, 10)
    assert tree.dec_lock(head) == 10
    assert (tree.evictable_size, tree.protected_size) == (10, 0)
    with pytest.raises(AssertionError, match="lock underflow"):
        tree.dec_lock(head)


def test_lock_on_leaf_locks_ancestors_and_nested_locks_count():
    tree, _ = three_nodes_equal_time()
    leaf = walk(tree, SEQ30)[-1][0]
    assert tree.inc_lock(leaf) == -30
    assert tree.inc_lock(leaf) == 0
    assert [n.lock_ref for n, _, _ in walk(tree, SEQ30)] == [2, 2, 2]
    assert tree.evict(100) == []
    assert tree.dec_lock(leaf) == 0
    assert tree.evict(100) == []
    assert tree.dec_lock(leaf) == 30
    assert flat(tree.evict(100)) == list(range(30))
    check_counters(tree)


def test_split_of_a_locked_node_keeps_the_lock_on_the_lower_part():
    tree, _ = make_tree()
    tree.insert(toks(SEQ30), list(range(30)), [])
    leaf = tree.match(toks(SEQ30))[-1]
    tree.inc_lock(leaf)
    tree.match(toks(SEQ30[:12]))  # splits the locked node
    upper, lower = [n for n, _, _ in walk(tree, SEQ30)]
    assert lower is leaf and upper.lock_ref == lower.lock_ref == 1
    assert tree.protected_size == 30
    tree.dec_lock(leaf)
    assert upper.lock_ref == 0 and tree.evictable_size == 30
    check_counters(tree)


# ----- eviction order -----


# ----- evictions that take part of a node -----


def test_a_split_eviction_takes_only_the_cheapest_head_it_needs():
    tree, _ = three_nodes_equal_time(b=0.5, split=True)
    assert tree.evict(4) == [list(range(4))]  # of the head node, only what was asked for
    assert layout(tree, SEQ30) == [(0, 4, "H"), (4, 10, "R"), (10, 20, "R"), (20, 30, "R")]
    assert tree.stats.split_kept_tokens == 6 and tree.stats.interior_evicted_tokens == 4
    # The rest of the head is still the cheapest: the next call takes it, then the next node.
    assert tree.evict(8) == [list(range(4, 10)), list(range(10, 12))]
    assert layout(tree, SEQ30)[-2:] == [(12, 20, "R"), (20, 30, "R")]
    assert tree.plan(tree.match(toks(SEQ30))).recompute == [(0, 12)]
    check_counters(tree)


def test_a_split_eviction_takes_whole_granules():
    tree, _ = three_nodes_equal_time(b=0.5, split=True, granule=4)
    assert tree.evict(1) == [list(range(4))]
    assert tree.evict(5) == [list(range(4, 10))]  # 5 rounds up to 8, more than the 6 left
    with pytest.raises(ValueError, match="split_granule_tokens"):
        make_tree(split=True, granule=0)


def test_a_split_eviction_keeps_at_least_min_retained_tokens_or_takes_the_node():
    tree, _ = three_nodes_equal_time(b=0.5, split=True, min_retained=4)
    assert tree.evict(6) == [list(range(6))]  # 4 left: kept
    tree, _ = three_nodes_equal_time(b=0.5, split=True, min_retained=4)
    assert tree.evict(7) == [list(range(10))]  # 3 left would be an island too short: all of it


def test_with_uniform_cost_a_split_eviction_takes_a_leafs_tail_and_no_hole():
    tree, _ = three_nodes_equal_time(b=0.0, split=True)
    assert tree.evict(3) == [list(range(27, 30))]  # the deepest node, its tail: LRU's order
    assert layout(tree, SEQ30)[-1] == (20, 27, "R")
    assert tree.hole_tokens() == 0 and tree.stats.interior_evicted_tokens == 0
    # Without holes (max_holes 0) a leaf's tail goes too, position-aware cost or not.
    tree, _ = three_nodes_equal_time(b=0.5, split=True, max_holes=0)
    assert tree.evict(3) == [list(range(27, 30))]
    assert tree.hole_tokens() == 0
    check_counters(tree)


def test_a_split_eviction_keeps_the_namespace_of_the_rest():
    tree, _ = make_tree(b=0.5, split=True)
    tree.insert(toks(SEQ30), list(range(30)), [], namespace="lora-a")
    assert tree.evict(10) == [list(range(10))]
    path = tree.match(toks(SEQ30), "lora-a")
    assert tree.plan(path).recompute == [(0, 10)] and tree.plan(path).retained == [(10, 30)]
    assert tree.match(toks(SEQ30)) == []  # another namespace still sees nothing


def test_position_aware_cost_evicts_heads_first():
    tree, _ = three_nodes_equal_time(b=0.5)
    assert [tree.evict(1) for _ in range(3)] == [
        [list(range(10))],
        [list(range(10, 20))],
        [list(range(20, 30))],
    ]
    assert tree.stats.interior_evicted_tokens == 20
    # Across sequences, equal times: A=[0,10) (interior), B=[10,20) below it, C=[0,30) alone.
    tree, _ = make_tree(b=0.5)
    tree.insert(toks([1] * 10), list(range(10)), [])
    tree.insert(toks([1] * 10 + [2] * 10), list(range(20)), [(0, 10)])
    tree.insert(toks([3] * 30), list(range(30, 60)), [])
    assert tree.evict(1) == [list(range(10))]  # A: mean position 4.5
    # B and C both have mean position 14.5: equal keys, the deeper node (B) goes first.
    assert tree.evict(1) == [list(range(10, 20))]
    assert tree.evict(1) == [list(range(30, 60))]
    assert tree.num_nodes == 1


def test_uniform_cost_evicts_tails_first():
    tree, _ = three_nodes_equal_time(b=0.0)
    assert [tree.evict(1) for _ in range(3)] == [
        [list(range(20, 30))],
        [list(range(10, 20))],
        [list(range(10))],
    ]
    assert tree.stats.interior_evicted_tokens == 0


@pytest.mark.parametrize("share_boost", [0.0, 1.0])
def test_share_boost_keeps_shared_prefixes(share_boost):
    tree, _ = make_tree(b=1.0, share_boost=share_boost)
    tree.insert(toks([1, 1, 2, 2]), [0, 1, 2, 3], [])
    tree.insert(toks([1, 1, 3, 3]), [0, 1, 4, 5], [(0, 2)])  # [0,2) now has two children
    tree.insert(toks([5, 5]), [6, 7], [])  # same span and time as the shared [0,2)
    shared = walk(tree, [1, 1])[0][0]
    at = shared.last_access_time
    boosted = eviction_key(tree.cost, tree.reuse, tree.reuse.tau_s, 0, 2, at, 2)
    plain = eviction_key(tree.cost, tree.reuse, tree.reuse.tau_s, 0, 2, shared.last_access_time, 1)
    assert boosted == pytest.approx(plain + math.log1p(share_boost))
    # Without the boost the keys tie and the older heap entry (the shared node) goes first.
    assert tree.evict(1) == ([[6, 7]] if share_boost else [[0, 1]])


def test_rekey_when_tau_drifts():
    tree, clock = make_tree(tau=10.0)
    tree.insert(toks([1, 2, 3]), [0, 1, 2], [])
    assert not tree.maybe_rekey()
    clock.advance(1000)
    tree.match(toks([1, 2, 3]))  # a 1000 s gap moves tau well past 25 %
    assert tree.reuse.observed_gaps == 1 and tree.reuse.tau_s > 12.5
    assert tree.maybe_rekey()
    assert tree.evict(1) == [[0, 1, 2]]


# ----- cost model and reuse estimator -----


def test_cost_model_math():
    m = StaticCostModel(2.0, 0.5)
    assert m.cost_per_token(0, 10) == pytest.approx(2.0 + 0.5 * 4.5)
    assert 10 * m.cost_per_token(0, 10) == pytest.approx(sum(2.0 + 0.5 * p for p in range(10)))
    assert m.cost_per_token(10, 20) > m.cost_per_token(0, 10)
    assert StaticCostModel(1.0, 0.0).cost_per_token(5, 50) == 1.0


def test_reuse_estimator_updates():
    r = ReuseEstimator(10.0, share_boost=0.5, ema=0.5)
    r.observe_gap(0.0)
    r.observe_gap(-3.0)
    assert r.tau_s == 10.0 and r.observed_gaps == 0
    r.observe_gap(20.0)
    assert r.tau_s == pytest.approx(15.0) and r.observed_gaps == 1
    assert r.log_boost(0) == r.log_boost(1) == 0.0
    assert r.log_boost(3) == pytest.approx(math.log1p(1.0))
    assert ReuseEstimator(1.0, share_boost=0.0).log_boost(5) == 0.0


# ----- uniform cost is LRU: replay against SGLang's stock RadixCache -----


@pytest.fixture(scope="module")
def stock():
    """SGLang's stock radix cache module (slow import) and its parameter classes."""
    import sglang.srt.mem_cache.radix_cache as rc
    from sglang.srt.mem_cache.base_prefix_cache import (
        EvictParams,
        InsertParams,
        MatchPrefixParams,
    )

    return rc, InsertParams, MatchPrefixParams, EvictParams


class _FakeTimeModule:
    """Stands in for ``time`` inside radix_cache: monotonic() reads the fake clock."""

    def __init__(self, clock) -> None:
        self.monotonic = clock

    def __getattr__(self, name):
        return getattr(real_time, name)


class _FreeRecorder:
    device = "cpu"

    def __init__(self) -> None:
        self.freed: list[int] = []

    def free(self, values) -> None:
        self.freed.extend(int(v) for v in values)


def _stock_nodes(cache):
    """{path tokens: (last_access_time, lock_ref)} for every stock node."""
    out, stack = {}, [(cache.root_node, ())]
    while stack:
        node, prefix = stack.pop()
        for child in node.children.values():
            path = prefix + tuple(child.key.token_ids)
            out[path] = (child.last_access_time, child.lock_ref)
            stack.append((child, path))
    return out


def _our_nodes(tree):
    out, stack = {}, [(tree.root, ())]
    while stack:
        node, prefix = stack.pop()
        for child in node.children.values():
            assert child.value is not None, "uniform-cost LRU must never leave a hole"
            path = prefix + tuple(child.key)
            out[path] = (child.last_access_time, child.lock_ref)
            stack.append((child, path))
    return out


def _stock_resident_positions(cache, tokens) -> set[int]:
    node, pos, out = cache.root_node, 0, set()
    while pos < len(tokens):
        child = node.children.get(tokens[pos])
        if child is None:
            break
        key = child.key.token_ids
        n = 0
        while n < len(key) and pos + n < len(tokens) and key[n] == tokens[pos + n]:
            n += 1
        out.update(range(pos, pos + n))
        if n < len(key):
            break
        pos += n
        node = child
    return out


def _touch_only_accessed(cache, op):
    """Run a stock match/insert, then undo its touch of the lower half of a split node.

    Stock ``_match_prefix_helper``/``_insert_helper`` set ``child.last_access_time`` before
    ``_split_node``, so the remainder past the match point (which was not accessed) is refreshed
    too. Our tree refreshes only the accessed upper part (true LRU); see
    ``test_stock_refreshes_split_remainder``. Every other step is left to stock.
    """
    before, stack = [], [cache.root_node]
    while stack:
        node = stack.pop()
        before.append((node, len(node.key), node.last_access_time))
        stack.extend(node.children.values())
    result = op()
    for node, key_len, t in before:
        if len(node.key) < key_len:
            node.last_access_time = t
    return result


def test_stock_refreshes_split_remainder(stock, monkeypatch):
    """Documents the one stock quirk the LRU replay neutralises (SGLang 0.5.16)."""
    rc, InsertParams, MatchPrefixParams, EvictParams = stock
    clock = FakeClock()
    monkeypatch.setattr(rc, "time", _FakeTimeModule(clock))
    recorder = _FreeRecorder()
    cache = rc.RadixCache.create_simulated(mock_allocator=recorder)
    tree, _ = make_tree(clock=clock)
    import torch

    for seq, vals in (([1, 2, 3, 4], [0, 1, 2, 3]), ([5, 6], [4, 5])):
        clock.advance()
        cache.insert(InsertParams(key=rc.RadixKey(toks(seq)), value=torch.tensor(vals)))
        tree.insert(toks(seq), vals, [])
    clock.advance()
    cache.match_prefix(MatchPrefixParams(key=rc.RadixKey(toks([1, 2]))))
    tree.match(toks([1, 2]))
    cache.evict(EvictParams(num_tokens=2))
    # Stock refreshed [3,4] at the match and evicts [5,6]; [3,4] was idle longer.
    assert recorder.freed == [4, 5]
    assert tree.evict(2) == [[2, 3]]


@pytest.mark.parametrize("seed", range(6))
def test_uniform_cost_reduces_to_lru(stock, monkeypatch, seed):
    import torch

    rc, InsertParams, MatchPrefixParams, EvictParams = stock
    clock = FakeClock(10.0)
    monkeypatch.setattr(rc, "time", _FakeTimeModule(clock))
    recorder = _FreeRecorder()
    cache = rc.RadixCache.create_simulated(mock_allocator=recorder)
    assert cache.eviction_policy == "lru"
    tree, _ = make_tree(a=1.0, b=0.0, share_boost=0.0, clock=clock)

    rng = random.Random(seed)
    sessions = [[rng.randrange(4) for _ in range(rng.randint(2, 8))] for _ in range(4)]
    inserted: list[list[int]] = []
    locks: list[tuple[object, object]] = []
    next_slot = 0
    evictions = 0

    def compare():
        assert _our_nodes(tree) == _stock_nodes(cache)
        assert tree.evictable_size == cache.evictable_size()
        assert tree.protected_size == cache.protected_size()
        for seq in inserted:
            assert resident_positions(tree, seq) == _stock_resident_positions(cache, seq)

    for _ in range(300):
        clock.advance(1.0)
        seq = rng.choice(sessions) + [rng.randrange(4) for _ in range(rng.randint(0, 6))]
        op = rng.random()
        if op < 0.35:
            values = list(range(next_slot, next_slot + len(seq)))
            next_slot += len(seq)
            _touch_only_accessed(
                cache,
                lambda s=seq, v=values: cache.insert(
                    InsertParams(key=rc.RadixKey(toks(s)), value=torch.tensor(v))
                ),
            )
            tree.insert(toks(seq), values, [])
            inserted.append(seq)
        elif op < 0.65:
            res = _touch_only_accessed(
                cache, lambda s=seq: cache.match_prefix(MatchPrefixParams(key=rc.RadixKey(toks(s))))
            )
            path = tree.match(toks(seq))
            last = path[-1] if path else tree.root
            assert res.last_device_node.key.token_ids[-1:] == last.key[-1:]
            assert len(res.device_indices) == (path[-1].end if path else 0)
            if rng.random() < 0.5 and len(locks) < 3:
                cache.inc_lock_ref(res.last_device_node)
                tree.inc_lock(last)
                locks.append((res.last_device_node, last))
        elif op < 0.75 and locks:
            stock_node, our_node = locks.pop(rng.randrange(len(locks)))
            cache.dec_lock_ref(stock_node)
            tree.dec_lock(our_node)
        else:
            n = rng.randint(1, 12)
            recorder.freed.clear()
            result = cache.evict(EvictParams(num_tokens=n))
            ours = flat(tree.evict(n))
            assert len(ours) == result.num_tokens_evicted
            assert sorted(ours) == sorted(recorder.freed)
            evictions += bool(ours)
        compare()
    for stock_node, our_node in locks:
        cache.dec_lock_ref(stock_node)
        tree.dec_lock(our_node)
    recorder.freed.clear()
    cache.evict(EvictParams(num_tokens=10**6))
    assert sorted(flat(tree.evict(10**6))) == sorted(recorder.freed)
    compare()
    assert tree.num_nodes == 1 and evictions > 10


# ----- programs: tags and release -----


def two_programs(**kw):
    """A shared 10-token prompt, then program "a"'s 20 tokens (older) and program "b"'s 20."""
    tree, clock = make_tree(**kw)
    prompt = list(range(1, 11))
    a, b = prompt + list(range(200, 220)), prompt + list(range(300, 320))
    out_a = tree.insert(toks(a), list(range(30)), [])
    tree.tag(out_a.last_node, "a")
    clock.advance()
    out_b = tree.insert(toks(b), list(range(100, 130)), [])
    tree.tag(out_b.last_node, "b")
    return tree, clock, prompt, a, b


def test_a_released_program_goes_first_and_a_shared_prefix_stays():
    tree, clock, prompt, a, b = two_programs()
    # LRU order would evict the older program "a" first; release "b", the newer, instead.
    assert tree.release("b") == 20
    freed = tree.evict(20)
    assert flat(freed) == list(range(110, 130))
    assert resident_positions(tree, a) == set(range(30))
    # The prompt is still held by "a": releasing "b" did not release it.
    (prompt_node, _, _), *_ = walk(tree, prompt)
    assert prompt_node.owners == {"a"} and not prompt_node.released
    check_counters(tree)
    assert tree.stats.released_tokens == 20


def test_the_last_owner_releases_the_shared_prefix_and_a_match_revives_it():
    tree, clock, prompt, a, b = two_programs()
    tree.release("a")
    assert tree.release("b") == 20 + 10  # b's own tail, then the prompt nobody holds now
    tree.match(toks(prompt))  # a new program reads the prompt: ordinary again
    (prompt_node, _, _), *_ = walk(tree, prompt)
    assert not prompt_node.released
    freed = tree.evict(40)
    # Both tails go before the prompt, which was just used.
    assert sorted(flat(freed)) == list(range(10, 30)) + list(range(110, 130))
    check_counters(tree)


def test_release_of_an_unknown_program_and_of_evicted_nodes_is_harmless():
    tree, clock, prompt, a, b = two_programs(max_holes=0)
    assert tree.release("nobody") == 0
    tree.evict(60)  # everything goes; the tags go with the deleted nodes
    assert tree.resident_tokens() == 0 and tree._owned == {}
    assert tree.release("a") == 0 and tree.release("b") == 0
    check_counters(tree)


def test_tags_follow_splits():
    tree, clock, prompt, a, b = two_programs()
    tree.match(toks(a[:15]))  # splits a's tail at position 15
    lower = walk(tree, a)[-1][0]
    upper = lower.parent
    assert upper.owners == lower.owners == {"a"}
    assert tree.release("a") == 20  # the prompt is b's too
    assert upper.released and lower.released


def test_covered_tokens_counts_the_overlap_of_two_range_sets():
    assert covered_tokens([], [(0, 10)]) == 0
    assert covered_tokens([(0, 10)], [(0, 10)]) == 10
    assert covered_tokens([(0, 10), (20, 30)], [(5, 25)]) == 10
    assert covered_tokens([(0, 4)], [(4, 8)]) == 0


def test_common_prefix_len_matches_a_token_by_token_scan() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = toks(rng.randrange(3) for _ in range(rng.randint(0, 40)))
        b = toks(rng.randrange(3) for _ in range(rng.randint(0, 8))) + a[: rng.randint(0, len(a))]
        b += toks(rng.randrange(3) for _ in range(rng.randint(0, 8)))
        start = rng.randint(0, len(b))
        n = min(len(a), len(b) - start)
        same = next((i for i in range(n) if a[i] != b[start + i]), n)
        for page_size in (1, 4, 16):
            assert _common_prefix_len(a, b, start, page_size) == same - same % page_size
