"""core.hit_density: LHD's hit density by idle age, learned from hits and evictions."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asymcache_sglang.core.hit_density import HitDensity, HitDensityConfig

FAST = HitDensityConfig(warmup_tokens=1)


def test_not_ready_until_warm():
    density = HitDensity(HitDensityConfig(warmup_tokens=100))
    density.observe_hit(1.0, 60)
    assert density.density(0.5) is None
    density.observe_eviction(9.0, 40)
    assert density.density(0.5) is not None


def test_sessions_returning_after_a_think_time_are_densest_just_before_it():
    # Every idle period ends in a hit at 3 s (a session back from thinking) or an eviction at
    # 30 s (a session that ended): KV idle 2.5 s is about to be reused, KV idle 5 s never is.
    density = HitDensity(FAST)
    for _ in range(50):
        density.observe_hit(3.0, 100)
        density.observe_eviction(30.0, 100)
    young, near, past = density.density(0.0), density.density(2.5), density.density(5.0)
    assert near > young > 0
    assert past == 0.0 and density.density(100.0) == 0.0


def test_memoryless_reuse_gives_a_flat_density():
    # Exponential gaps: the density, hits per token-second left, does not depend on the age.
    rng = random.Random(0)
    density = HitDensity(HitDensityConfig(warmup_tokens=1, bins=24, max_age_s=400.0))
    for _ in range(20000):
        density.observe_hit(rng.expovariate(1 / 10.0), 1)
    values = [density.density(age) for age in (0.5, 2.0, 5.0, 10.0, 20.0)]
    assert max(values) / min(values) < 1.25, values
    assert values[2] == pytest.approx(0.1, rel=0.2)


def test_old_counts_decay():
    density = HitDensity(HitDensityConfig(warmup_tokens=1, decay_every_tokens=100, decay=0.5))
    density.observe_hit(3.0, 100)  # the 100th token: everything halves
    assert sum(density.hits) == pytest.approx(50.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.floats(0.0, 5000.0), st.integers(1, 5000)),
        min_size=1, max_size=60,
    )
)  # fmt: skip
def test_density_is_finite_non_negative_and_zero_past_every_end(events):
    density = HitDensity(FAST)
    for hit, age, tokens in events:
        (density.observe_hit if hit else density.observe_eviction)(age, tokens)
    last_end = max(age for _, age, _ in events)
    for age in (0.0, 0.1, 1.0, 10.0, 100.0, 1000.0):
        value = density.density(age)
        assert value is not None and value >= 0.0 and value < float("inf")
    # Past the bin of the oldest end nothing is left to hit (the last bin is open-ended).
    beyond = last_end * 2 + 1.0
    if density._bin(beyond) > density._bin(last_end):
        assert density.density(beyond) == 0.0


def test_bad_configs_are_refused():
    with pytest.raises(ValueError):
        HitDensityConfig(min_age_s=5.0, max_age_s=1.0)
    with pytest.raises(ValueError):
        HitDensityConfig(decay=0.0)
