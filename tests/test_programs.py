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


def test_beyond_gives_the_share_longer_and_the_mean_excess():
    returns = ReturnGaps()
    assert returns.beyond(0.0) == (0.0, 0.0)
    for gap in (2.0, 4.0, 6.0):
        returns.observe(gap)
    assert returns.beyond(3.0) == pytest.approx((2 / 3, (1.0 + 3.0) / 3))
    assert returns.beyond(6.0) == (0.0, 0.0)


def test_a_program_seen_often_follows_its_own_gaps_and_a_new_one_the_crowds():
    """The pooled gaps count as ``prior_gaps`` of a program's own: a program back after 1 s
    eight times, where the pooled gaps average 8.2 s, is expected back after (4·8.2 + 8·1) / 12."""
    clock = Clock()
    programs = ProgramTracker(clock, min_gaps=1, prior_gaps=4.0)
    for _ in range(32):
        programs.returns.observe(10.0)
    for _ in range(8):
        programs.admit("fast", [1, 2])
        programs.release("fast", [1, 2])
        clock.now += 1.0
    programs.admit("fast", [1, 2])  # the 8th return gap
    programs.release("fast", [1, 2])
    programs.admit("new", [7, 8])
    programs.release("new", [7, 8])
    pooled = (32 * 10.0 + 8 * 1.0) / 40  # its own gaps are among everyone's
    assert programs.next_use_in_s("new") == pytest.approx(pooled)
    assert programs.next_use_in_s("fast") == pytest.approx((4 * pooled + 8 * 1.0) / 12)
    assert programs.back_at("fast") == pytest.approx(clock.now + 3.4)
    # Idle past every gap of its own, the crowd's still say it comes back.
    clock.now += 2.0
    assert programs.next_use_in_s("fast") == pytest.approx(8.0)
    programs.close("fast")
    assert programs.next_use_in_s("fast") == math.inf and "fast" not in programs._own


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
        program = tracker.admit(None, history)
        programs.append(program)
        history = history + [base + 1000 + turn] * 5  # the answer
        clock.now += 1.0
        tracker.release(program, history)
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
    tracker = ProgramTracker(clock, min_gaps=1)
    tracker.returns.observe(2.0)
    assert tracker.admit("agent-7", [1, 2, 3]) == "agent-7"
    assert tracker.next_use_in_s("agent-7") == 0.0  # a request is in
    assert tracker.back_at("agent-7") == -math.inf
    clock.now = 10.0
    tracker.release("agent-7", [1, 2, 3, 4])
    assert tracker.back_at("agent-7") == pytest.approx(12.0)
    clock.now += 0.5
    assert tracker.next_use_in_s("agent-7") == pytest.approx(1.5)
    tracker.close("agent-7")
    assert tracker.next_use_in_s("agent-7") == math.inf
    assert tracker.back_at("agent-7") == math.inf
    # A different prompt with the same length and tail is another program once that one closed.
    assert tracker.admit(None, [1, 2, 3, 4, 9]) != "agent-7"


def test_a_retracted_request_counts_again_and_the_longest_waiting_program_is_forgotten_first():
    clock = Clock()
    tracker = ProgramTracker(clock, max_waiting=2)
    program = tracker.admit(None, [1] * 20)
    tracker.leave(program)  # retracted: no KV went to the cache
    assert tracker.back_at(program) == math.inf  # out, and not waiting
    tracker.enter(program)
    assert tracker.back_at(program) == -math.inf
    tracker.release(program, [1] * 25)
    for token in (2, 3):
        clock.now += 1.0
        other = tracker.admit(None, [token] * 20)
        tracker.release(other, [token] * 25)
    assert tracker.next_use_in_s(program) == math.inf  # the third waiting program pushed it out
    assert tracker.admit(None, [1] * 30) != program  # and it is no longer recognised
    with pytest.raises(ValueError):
        ProgramTracker(clock, tip_tokens=0)


def test_two_requests_of_one_program_in_at_once_wait_only_when_both_are_out():
    clock = Clock()
    tracker = ProgramTracker(clock, min_gaps=1)
    tracker.returns.observe(5.0)
    tracker.admit("p", [1, 2])
    tracker.admit("p", [1, 3])  # a parallel branch of the same program
    tracker.release("p", [1, 2, 9])
    assert tracker.back_at("p") == -math.inf
    clock.now = 1.0
    tracker.release("p", [1, 3, 9])
    assert tracker.back_at("p") == pytest.approx(6.0)
    # Either branch's continuation finds the program: the last one released is its tip.
    assert tracker.admit(None, [1, 3, 9, 4]) == "p"


def test_return_times_move_only_at_events_and_deadlines_and_changed_names_them():
    clock = Clock()
    tracker = ProgramTracker(clock, min_gaps=2)
    tracker.admit("a", [1])
    tracker.release("a", [1, 2])
    assert tracker.changed(clock.now) == ["a"]
    assert tracker.back_at("a") is None  # no return seen yet: no opinion
    clock.now = 2.0
    tracker.admit("a", [1, 2, 3])  # back after 2 s
    tracker.release("a", [1, 2, 3, 4])
    assert tracker.back_at("a") is None  # one gap, two needed
    tracker.admit("b", [7])
    tracker.release("b", [7, 8])
    clock.now = 6.0
    tracker.admit("a", [1, 2, 3, 4, 5])  # back after 4 s: the second gap
    assert tracker.ready
    # "b", waiting since 2.0, got its first estimate from the gaps (2, 4) at once: it has
    # waited as long as the longest, so it is not expected back.
    assert tracker.back_at("b") == math.inf
    assert tracker.changed(clock.now) == ["a", "b"]
    assert tracker.changed(clock.now) == []
    tracker.release("a", [1, 2, 3, 4, 5, 6])
    assert tracker.back_at("a") == pytest.approx(6.0 + 3.0)  # the mean gap
    assert tracker.changed(8.0) == ["a"]
    assert tracker.changed(8.9) == []
    # Past its deadline "a" is re-estimated from its wait: 3.1 s so far, only the 4 s gap is
    # longer, so it is expected 0.9 s later.
    assert tracker.changed(9.1) == ["a"]
    assert tracker.back_at("a") == pytest.approx(9.1 + 0.9)
    # Past every gap seen it is not expected back.
    assert tracker.changed(10.5) == ["a"] and tracker.back_at("a") == math.inf
    assert tracker.changed(1e9) == []


def test_a_deadline_always_moves_past_now_even_by_rounding():
    """A wait a hair short of the longest gap must not come due again at the same instant
    (``changed`` would loop forever): at a large clock every re-estimate lands past now."""
    clock = Clock()
    tracker = ProgramTracker(clock, min_gaps=1)
    for gap in (0.1, 0.2, 0.1 + 0.2):
        tracker.returns.observe(gap)
    clock.now = 1e9
    tracker.admit("p", [1])
    tracker.release("p", [1, 2])
    for step in range(400):
        now = 1e9 + step * 1e-3
        tracker.changed(now)
        assert tracker.back_at("p") > now
    assert tracker.back_at("p") == math.inf
    assert tracker.returns.expected_remaining_s(0.3 - 1e-17) > 0


def test_the_tip_index_stays_the_inverse_of_each_programs_last_request():
    clock = Clock()
    tracker = ProgramTracker(clock, tip_tokens=2, max_waiting=20, min_gaps=3)
    rng = random.Random(3)
    for _ in range(400):
        clock.now += 0.1
        tokens = [rng.randrange(4) for _ in range(rng.randrange(1, 8))]  # collisions happen
        program = tracker.admit(rng.choice([None, None, f"named-{rng.randrange(5)}"]), tokens)
        if rng.random() < 0.2:
            tracker.leave(program)
        else:
            tracker.release(program, tokens + [rng.randrange(4)])
        if rng.random() < 0.1:
            tracker.close(program)
        tips = tracker._tip_of
        assert {tip: p for p, tip in tips.items()} == tracker._program_at
        assert tracker._lengths == sorted({length for length, _ in tips.values()})
        assert sum(tracker._tips_of_length.values()) == len(tips)
        assert len(tracker._waiting_since) <= 20
        # Only waiting programs have a return time, every one of them once the gaps can say.
        assert set(tracker._back_at) <= set(tracker._waiting_since)
        if tracker.ready:
            assert set(tracker._back_at) == set(tracker._waiting_since)
        for back, _, waiting in tracker._deadlines:
            assert back > clock.now - 0.1 or tracker._back_at.get(waiting) != back
        tracker.changed(clock.now)
