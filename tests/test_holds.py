"""Soft holds in the tree: KV ranked by when its programs are expected back (core.programs and
HoleAwareTree with ``returns``)."""

from __future__ import annotations

import math
import random
from array import array

from asymcache_sglang.core.cost import StaticCostModel
from asymcache_sglang.core.programs import ProgramTracker
from asymcache_sglang.core.reuse import ReuseEstimator
from asymcache_sglang.core.tree import HoleAwareTree


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def held_tree(gaps=(10.0,) * 8, max_owners=16, b=1.0 / 64, split=False):
    clock = Clock()
    programs = ProgramTracker(clock)
    for gap in gaps:
        programs.returns.observe(gap)
    tree = HoleAwareTree(
        StaticCostModel(1.0, b),
        ReuseEstimator(1000.0),
        max_holes=8,
        min_retained_tokens=1,
        clock=clock,
        returns=programs,
        max_owners=max_owners,
        split_evictions=split,
    )
    return tree, programs, clock


def run(tree, programs, program, tokens, slots, *, split_at=()):
    """One request of ``program``: matched (splitting at ``split_at``), cached, released."""
    for cut in split_at:
        tree.match(array("q", tokens[:cut]))
    programs.admit(program, tokens)
    out = tree.insert(array("q", tokens), slots, [])
    for cut in split_at:
        tree.match(array("q", tokens[:cut]))
    tree.tag(out.last_node, program)
    programs.release(program, tokens)


def resident(tree) -> set[int]:
    return {slot for value in tree.resident_values() for slot in value}


def test_the_program_expected_back_last_loses_its_head_first():
    tree, programs, clock = held_tree()
    a, b = list(range(1000, 1030)), list(range(2000, 2030))
    run(tree, programs, "a", a, list(range(0, 30)), split_at=(10, 20))
    clock.now = 5.0
    run(tree, programs, "b", b, list(range(100, 130)), split_at=(10, 20))
    clock.now = 6.0  # a is back at 10, b at 15: b goes first, its cheap head before its tail
    assert programs.back_at("a") == 10.0 and programs.back_at("b") == 15.0
    assert sorted(s for v in tree.evict(10) for s in v) == list(range(100, 110))
    assert sorted(s for v in tree.evict(10) for s in v) == list(range(110, 120))
    assert resident(tree) == set(range(30)) | set(range(120, 130))
    assert tree.stats.interior_evicted_tokens == 20  # holes: b's tail outlives its head


def test_a_sooner_programs_cheap_head_goes_before_a_later_programs_dear_middle():
    """Cost over wait: the program back last loses its head first, but a program back sooner
    loses its cheap head before the later one loses its dearer middle."""
    tree, programs, clock = held_tree(b=1.0)  # the token at position p costs 1 + p
    a, b = list(range(1000, 1030)), list(range(2000, 2030))
    run(tree, programs, "a", a, list(range(0, 30)), split_at=(10, 20))
    clock.now = 5.0
    run(tree, programs, "b", b, list(range(100, 130)), split_at=(10, 20))
    clock.now = 6.0  # a back in 4 s, b in 9 s; heads cost 5.5 a token, middles 15.5
    # Per second of wait: b's head 5.5 / 9, then a's head 5.5 / 4 before b's middle 15.5 / 9.
    assert sorted(s for v in tree.evict(10) for s in v) == list(range(100, 110))
    assert sorted(s for v in tree.evict(10) for s in v) == list(range(0, 10))
    assert sorted(s for v in tree.evict(10) for s in v) == list(range(110, 120))


def test_a_program_past_every_gap_seen_is_not_expected_back_and_goes_first():
    tree, programs, clock = held_tree()
    run(tree, programs, "a", list(range(1000, 1020)), list(range(20)))
    clock.now = 5.0
    run(tree, programs, "b", list(range(2000, 2020)), list(range(100, 120)))
    clock.now = 10.5  # a waited past the 10 s gaps: a deadline re-estimates it as never back
    assert sorted(s for v in tree.evict(5) for s in v) == list(range(20))
    assert programs.back_at("a") == math.inf


def test_a_held_node_waits_against_an_idle_unowned_one_and_a_running_program_stays():
    tree, programs, clock = held_tree()
    tree.insert(array("q", range(5000, 5010)), list(range(200, 210)), [])  # unowned, idle
    clock.now = 1.0
    run(tree, programs, "a", list(range(1000, 1010)), list(range(10)))  # back at 11
    clock.now = 4.0  # unowned idle 4 s, a back in 7 s: a goes first
    assert sorted(s for v in tree.evict(1) for s in v) == list(range(10))
    run(tree, programs, "b", list(range(2000, 2010)), list(range(20, 30)))  # back at 14
    clock.now = 8.0  # unowned idle 8 s, b back in 6 s: the unowned node goes first
    assert sorted(s for v in tree.evict(1) for s in v) == list(range(200, 210))
    programs.admit("b", list(range(2000, 2011)))  # b has a request in: held over anything
    tree.insert(array("q", range(6000, 6010)), list(range(300, 310)), [])
    clock.now = 9.0
    assert sorted(s for v in tree.evict(1) for s in v) == list(range(300, 310))
    assert resident(tree) == set(range(20, 30))


def test_a_closed_program_goes_first_and_the_prompt_many_share_ranks_by_recency():
    tree, programs, clock = held_tree(max_owners=2)
    prompt = list(range(1, 11))
    for i, program in enumerate(("a", "b", "c")):
        clock.now = float(i)
        tokens = prompt + list(range(100 * (i + 1), 100 * (i + 1) + 10))
        run(tree, programs, program, tokens, list(range(30 * i, 30 * i + 20)))
    prompt_node = tree.root.children[1]
    assert prompt_node.shared and prompt_node.owners is None
    programs.close("a")
    assert tree.release("a") == 10  # a's own tail; the shared prompt is no program's
    clock.now = 3.0
    assert sorted(s for v in tree.evict(1) for s in v) == list(range(10, 20))
    # c (back at 12) before b (back at 11), both before the prompt, idle 2 s and shared.
    assert sorted(s for v in tree.evict(1) for s in v) == list(range(70, 80))
    assert sorted(s for v in tree.evict(1) for s in v) == list(range(40, 50))
    assert resident(tree) == set(range(10))


def test_without_any_program_the_holds_change_nothing():
    """Untagged KV ranks exactly as without holds (and so reduces to LRU as that does)."""
    rng = random.Random(5)
    plain = HoleAwareTree(StaticCostModel(1.0, 0.01), ReuseEstimator(1000.0), min_retained_tokens=1)
    held, _, clock = held_tree(b=0.01, split=True)
    plain.clock = clock
    for step in range(300):
        clock.now += rng.choice([0.1, 1.0, 5.0])
        tokens = array("q", [rng.randrange(3) for _ in range(rng.randint(1, 12))])
        if rng.random() < 0.5:
            for tree in (plain, held):
                path = tree.match(tokens)
                tree.insert(
                    tokens, [(step, p) for p in range(len(tokens))], tree.plan(path).retained
                )
        else:
            n = rng.randint(1, 6)
            assert plain.evict(n) == held.evict(n)
    assert plain.resident_values() == held.resident_values()


DETERMINISM_SCRIPT = """
import random
from array import array
from tests.test_holds import held_tree, run
tree, programs, clock = held_tree(gaps=(3.0, 5.0, 8.0) * 3, max_owners=3)
rng = random.Random(2)
out, slot = [], 0
for step in range(400):
    clock.now += rng.choice([0.1, 0.5, 2.0])
    program = f"p{rng.randrange(12)}"
    tokens = [rng.randrange(4)] + [rng.randrange(3) for _ in range(rng.randint(1, 12))]
    run(tree, programs, program, tokens, list(range(slot, slot + len(tokens))))
    slot += len(tokens)
    if rng.random() < 0.1:
        programs.close(program)
        tree.release(program)
    out.append(tree.evict(rng.randint(1, 9)))
print(out)
"""


def test_eviction_is_the_same_in_every_process_so_tp_ranks_agree():
    """Sets of programs and of nodes iterate by hash and address, which differ between
    processes (TP ranks); nothing may depend on that order."""
    import os
    import subprocess
    import sys

    outputs = {
        subprocess.run(
            [sys.executable, "-c", DETERMINISM_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1 and len(next(iter(outputs))) > 1000


def test_the_switch_to_holding_leaves_no_stale_entry_for_a_later_eviction_to_drain():
    tree, programs, clock = held_tree(gaps=())
    prompts = [[5000 + i] + list(range(100 * i, 100 * i + 30)) for i in range(20)]
    for i, tokens in enumerate(prompts):
        run(tree, programs, f"p{i}", tokens, list(range(40 * i, 40 * i + 31)), split_at=(10,))
    clock.now = 2.0
    for i in range(programs.min_gaps):  # programs come back: the return gaps it needs
        assert not programs.ready and len(tree._heap) > 0
        tokens = prompts[i] + [7000 + i]
        run(tree, programs, f"p{i}", tokens, list(range(40 * i, 40 * i + 32)), split_at=(31,))
    assert programs.ready and tree._held_entries == 0
    assert tree.evict(0) == []  # the switch: every owned node moves to its program's heap
    assert tree._held_entries > 0
    assert all(tree._live(entry) for entry in tree._heap)
