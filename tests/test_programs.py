"""Programs and their returns, learned from requests alone (asymcache_sglang.core.programs)."""

from __future__ import annotations

import math
import random

import pytest

from asymcache_sglang.core.programs import ProgramTracker, ReturnGaps


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_program_is_expected_back_after_the_gaps_seen_so_far():
    returns = ReturnGaps()
    assert returns.expected_remaining_s(0.0) == math.inf
    for gap in (2.0, 4.0, 6.0):
        returns.observe(gap)
    assert returns.expected_remaining_s(0.0) == pytest.approx(4.0)
    assert returns.expected_remaining_s(3.0) == pytest.approx(2.0)  # (1 + 3) / 2
    assert returns.expected_remaining_s(6.0) == math.inf


def test_the_window_keeps_the_latest_gaps_and_matches_the_plain_mean():
    returns = ReturnGaps(window=50)
    rng = random.Random(0)
    gaps = [rng.lognormvariate(0.7, 0.8) for _ in range(200)]
    for i, gap in enumerate(gaps):
        returns.observe(gap)
        if i % 37 == 0:  # queries between observations see the window as it is then
            returns.expected_remaining_s(1.0)
    kept = gaps[-50:]
    assert len(returns) == 50
    for idle in (0.0, 1.0, 2.5, 5.0):
        longer = [g - idle for g in kept if g > idle]
        expected = sum(longer) / len(longer) if longer else math.inf
        assert returns.expected_remaining_s(idle) == pytest.approx(expected)
    with pytest.raises(ValueError):
        ReturnGaps(window=0)


def conversation(tracker: ProgramTracker, clock: Clock, turns: int, base: int) -> list:
    """One conversation without a session id: each prompt begins with the last request and its
    answer; returns the program of every turn."""
    history, programs = list(range(base, base + 100)), []
    for turn in range(turns):
        rid = f"{base}-{turn}"
        programs.append(tracker.admit(rid, None, history))
        history = history + [base + 1000 + turn] * 5  # the answer
        clock.now += 1.0
        tracker.release(rid, history)
        clock.now += 3.0  # thinking
        history = history + [base + 2000 + turn] * 7  # the next question
    return programs


def test_a_conversation_without_session_ids_is_one_program_and_its_returns_are_gaps():
    clock = Clock()
    tracker = ProgramTracker(clock)
    first = conversation(tracker, clock, turns=4, base=10)
    second = conversation(tracker, clock, turns=3, base=50_000)
    assert len(set(first)) == 1 and len(set(second)) == 1 and first[0] != second[0]
    assert len(tracker.returns) == 3 + 2
    assert tracker.returns.expected_remaining_s(0.0) == pytest.approx(3.0)
    clock.now += 1.0  # the last release of each was 4 s ago, 1 s past every gap seen
    assert tracker.next_use_in_s(second[0]) == math.inf


def test_a_named_program_waits_between_requests_and_a_close_ends_it():
    clock = Clock()
    tracker = ProgramTracker(clock)
    tracker.returns.observe(2.0)
    assert tracker.admit("r1", "agent-7", [1, 2, 3]) == "agent-7"
    assert tracker.next_use_in_s("agent-7") == 0.0  # a request is in
    tracker.release("r1", [1, 2, 3, 4])
    clock.now += 0.5
    assert tracker.next_use_in_s("agent-7") == pytest.approx(1.5)
    tracker.close("agent-7")
    assert tracker.next_use_in_s("agent-7") == math.inf
    # A different prompt with the same length and tail is another program once that one closed.
    assert tracker.admit("r2", None, [1, 2, 3, 4, 9]) != "agent-7"


def test_a_retracted_request_counts_again_and_the_longest_waiting_program_is_forgotten_first():
    clock = Clock()
    tracker = ProgramTracker(clock, max_waiting=2)
    tracker.admit("a", None, [1] * 20)
    tracker.forget("a")  # retracted: no KV went to the cache
    program = tracker.admit("a", None, [1] * 20)
    assert tracker.program_of("a") == program
    tracker.release("a", [1] * 25)
    for rid, token in (("b", 2), ("c", 3)):
        clock.now += 1.0
        tracker.admit(rid, None, [token] * 20)
        tracker.release(rid, [token] * 25)
    assert tracker.next_use_in_s(program) == math.inf  # the third waiting program pushed it out
    assert tracker.admit("d", None, [1] * 30) != program  # and it is no longer recognised
    with pytest.raises(ValueError):
        ProgramTracker(clock, tip_tokens=0)


def test_the_tip_index_stays_the_inverse_of_each_programs_last_request():
    clock = Clock()
    tracker = ProgramTracker(clock, tip_tokens=2, max_waiting=20)
    rng = random.Random(3)
    for step in range(400):
        clock.now += 0.1
        tokens = [rng.randrange(4) for _ in range(rng.randrange(1, 8))]  # collisions happen
        rid = f"r{step}"
        program = tracker.admit(rid, rng.choice([None, None, f"named-{rng.randrange(5)}"]), tokens)
        if rng.random() < 0.2:
            tracker.forget(rid)
        else:
            tracker.release(rid, tokens + [rng.randrange(4)])
        if rng.random() < 0.1:
            tracker.close(program)
        tips = tracker._tip_of
        assert {tip: p for p, tip in tips.items()} == tracker._program_at
        assert tracker._lengths == sorted({length for length, _ in tips.values()})
        assert sum(tracker._tips_of_length.values()) == len(tips)
        assert len(tracker._waiting_since) <= 20
