"""Every AsymCache setting is checked where the config is built, with the flag in the message."""

from __future__ import annotations

import pytest

from asymcache_sglang.core.config import AsymCacheArgsError, AsymCacheConfig


@pytest.mark.parametrize(
    ("setting", "flag"),
    [
        ({"max_holes": -1}, "--asymcache-max-holes"),
        ({"min_retained_tokens": 0}, "--asymcache-min-retained-tokens"),
        ({"cost_a": 0.0}, "--asymcache-cost-a"),
        ({"cost_a": -1.0}, "--asymcache-cost-a"),
        ({"cost_b": -0.1}, "--asymcache-cost-b"),
        ({"reuse_horizon_s": 0.0}, "--asymcache-reuse-horizon-s"),
        ({"reuse_horizon_s": -1.0}, "--asymcache-reuse-horizon-s"),
        ({"share_boost": -0.5}, "--asymcache-share-boost"),
        ({"msa_impl": "cutlass"}, "--asymcache-msa-impl"),
        ({"chunking": "dynamic"}, "--asymcache-chunking"),
        ({"tpot_budget_ms": 0.0}, "--asymcache-tpot-budget-ms"),
        ({"latency_min_r2": 1.5}, "--asymcache-latency-min-r2"),
        ({"latency_min_r2": -0.1}, "--asymcache-latency-min-r2"),
        ({"tp_size": 0}, "--tp-size"),
    ],
)
def test_out_of_range_settings_name_their_flag(setting, flag):
    with pytest.raises(AsymCacheArgsError) as err:
        AsymCacheConfig(**setting)
    assert flag in str(err.value) and "\n" not in str(err.value)


def test_boundary_settings_are_accepted():
    config = AsymCacheConfig(
        max_holes=0, min_retained_tokens=1, cost_b=0.0, share_boost=0.0, latency_min_r2=1.0
    )
    assert config.cost_model().cost_per_token(0, 100) == config.cost_a
    assert config.reuse_estimator().tau_s == config.reuse_horizon_s
