"""TP ranks decide alike: the agreed clock (core.pass_clock) and the broadcast of rank 0's latency
view and clock (tp_agreement), on trees whose ranks' wall clocks differ."""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable
from types import SimpleNamespace

from sglang.srt.mem_cache.cache_init_params import CacheInitParams

from asymcache_sglang.core.config import AsymCacheConfig
from asymcache_sglang.core.cost import StaticCostModel
from asymcache_sglang.core.digest import digest_of
from asymcache_sglang.core.pass_clock import ClockReading, PassClock
from asymcache_sglang.core.programs import ProgramTracker
from asymcache_sglang.core.reuse import ReuseEstimator
from asymcache_sglang.core.tree import HoleAwareTree
from asymcache_sglang.latency_runtime import LatencyRuntime
from asymcache_sglang.radix_cache import HoleAwareRadixCache
from asymcache_sglang.tp_agreement import LATENCY_SYNC_EVERY, RankZeroState, TpAgreement


class Wall:
    """A rank's wall clock: the true time, read late by its own scheduling jitter."""

    def __init__(self, seed: int, jitter_s: float) -> None:
        self.true_s = 0.0
        self.rng = random.Random(seed)
        self.jitter_s = jitter_s

    def __call__(self) -> float:
        return self.true_s + self.rng.uniform(0.0, self.jitter_s)


def test_ranks_on_different_wall_clocks_read_the_same_agreed_time():
    walls = [Wall(0, 0.0), Wall(1, 0.05)]
    walls[1].true_s = 1000.0  # another host's clock
    clocks = [PassClock(w) for w in walls]
    assert clocks[0].now() == clocks[1].now() == 0.0  # agreed before the first agreement too
    rng = random.Random(2)
    readings = []
    for pass_ in range(200):
        if pass_ % LATENCY_SYNC_EVERY == 0:
            reading = clocks[0].reading()  # rank 0's, broadcast
            readings.append(reading)
            for clock in clocks:
                clock.adopt(reading)
        assert clocks[0].now() == clocks[1].now()
        for clock in clocks:
            clock.tick()
        step = rng.choice([0.01, 0.01, 0.4])  # decode steps and the odd long prefill
        for wall in walls:
            wall.true_s += step
    times = [r.at_s for r in readings]
    assert times == sorted(times) and readings[-1].pass_s > 0
    # The agreed time follows rank 0's wall to within a sync period's worth of passes.
    assert abs(clocks[0].now() - walls[0].true_s) < LATENCY_SYNC_EVERY * 0.4


def test_the_clock_never_goes_back_when_passes_get_faster():
    wall = Wall(0, 0.0)
    clock = PassClock(wall)
    clock.adopt(clock.reading())
    for _ in range(16):  # slow passes set pass_s high
        clock.tick()
        wall.true_s += 1.0
    clock.adopt(clock.reading())
    seen = [clock.now()]
    for _ in range(16):  # then fast ones: the estimate runs ahead of the wall
        clock.tick()
        wall.true_s += 0.01
        seen.append(clock.now())
    clock.adopt(clock.reading())
    seen.append(clock.now())
    assert seen == sorted(seen)
    clock.adopt(ClockReading(at_s=0.0, pass_s=0.0))  # a stale reading cannot move it back
    assert clock.now() == seen[-1]


def rank_tree(clock: Callable[[], float]) -> tuple[HoleAwareTree, ProgramTracker]:
    programs = ProgramTracker(clock)
    tree = HoleAwareTree(
        StaticCostModel(1.0, 1.0 / 256),
        ReuseEstimator(30.0),
        max_holes=8,
        min_retained_tokens=16,
        clock=clock,
        returns=programs,
        split_granule_tokens=16,
    )
    return tree, programs


def run_ranks(agreed: bool, seed: int = 3) -> tuple[list[list[tuple[int, ...]]], list[int]]:
    """Two ranks fed the same multi-turn sessions pass by pass, their walls apart by up to 30 ms
    of jitter; what each rank evicted, call by call (freed slots), and its evicted-node digest."""
    walls = [Wall(10, 0.0), Wall(11, 0.03)]
    pass_clocks = [PassClock(w) for w in walls]
    ranks = [rank_tree(c.now if agreed else w) for c, w in zip(pass_clocks, walls)]
    evicted: list[list[tuple[int, ...]]] = [[], []]
    rng = random.Random(seed)
    sessions: dict[int, list[int]] = {}
    next_slot = 0
    for pass_ in range(600):
        if pass_ % LATENCY_SYNC_EVERY == 0:
            reading = pass_clocks[0].reading()
            for clock in pass_clocks:
                clock.adopt(reading)
        session = rng.randrange(12)
        tokens = sessions.get(session, [session * 100_000 + i for i in range(rng.randint(50, 200))])
        tokens = tokens + [rng.randrange(10, 90_000) for _ in range(rng.randint(10, 60))]
        sessions[session] = tokens
        slots = list(range(next_slot, next_slot + len(tokens)))
        next_slot += len(tokens)
        budget = rng.randint(0, 120)
        for rank, (tree, programs) in enumerate(ranks):
            tree.match(array("q", tokens))
            programs.admit(f"s{session}", tokens)
            out = tree.insert(array("q", tokens), slots, [])  # cached positions: duplicates
            tree.tag(out.last_node, f"s{session}")
            programs.release(f"s{session}", tokens)
            freed = tree.evict(budget)
            evicted[rank].append(tuple(s for value in freed for s in value))
        for clock in pass_clocks:
            clock.tick()
        step = rng.choice([0.01, 0.02, 0.3])
        for wall in walls:
            wall.true_s += step
    return evicted, [tree.stats.evicted_nodes_digest for tree, _ in ranks]


def test_two_ranks_on_the_agreed_clock_evict_the_same_slots():
    (rank0, rank1), digests = run_ranks(agreed=True)
    assert sum(map(len, rank0)) > 10_000  # pressure: much was evicted
    assert rank0 == rank1
    assert digests[0] == digests[1] != 0


def test_on_their_own_wall_clocks_the_same_ranks_part():
    """The case the agreement exists for: the same inputs, read at jittered wall times."""
    (rank0, rank1), digests = run_ranks(agreed=False)
    assert rank0 != rank1
    assert digests[0] != digests[1]


def test_a_digest_follows_the_order_of_what_it_saw():
    assert digest_of(0, 1, 2) == digest_of(digest_of(0, 1), 2) != digest_of(0, 2, 1)
    assert digest_of(0, -1) != digest_of(0, 1)


def test_on_pass_broadcasts_rank0s_view_and_clock_every_sync_period():
    config = AsymCacheConfig(tp_size=2)
    walls = [Wall(0, 0.0), Wall(1, 0.02)]
    agreements = [TpAgreement(LatencyRuntime(config), PassClock(w)) for w in walls]
    sent: list[RankZeroState] = []

    def from_rank0(state: RankZeroState) -> RankZeroState:
        sent.append(state)
        return sent[-2] if len(sent) % 2 == 0 else state  # rank 0 calls first each time

    for _ in range(3 * LATENCY_SYNC_EVERY):
        for agreement in agreements:
            agreement.on_pass(from_rank0)
        assert agreements[0].clock.now() == agreements[1].clock.now()
        for wall in walls:
            wall.true_s += 0.05
    assert len(sent) == 2 * 3  # one broadcast per rank per period
    assert agreements[1].latency.view == sent[-2].view


def test_with_tp_the_cache_builds_its_tree_on_the_agreed_clock():
    allocator = SimpleNamespace(device="cpu", page_size=1)
    params = CacheInitParams(
        disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=allocator, page_size=1
    )
    config = AsymCacheConfig(tp_size=2)
    latency = LatencyRuntime(config)
    agreement = TpAgreement(latency, PassClock(Wall(0, 0.0)))
    cache = HoleAwareRadixCache(params, config, latency, agreement)
    agreement.clock.adopt(ClockReading(at_s=123.0, pass_s=0.5))
    agreement.clock.tick()
    cache.reset()  # a flush builds the tree again, on the same clock
    assert cache.tree.clock() == agreement.clock.now() == 123.5
