"""What eviction and chunking read: the published latency fit (per update, or TP rank 0's)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sglang.srt.mem_cache.cache_init_params import CacheInitParams

from asymcache_sglang.config import AsymCacheConfig
from asymcache_sglang.latency_model import BatchFeatures, LatencyView
from asymcache_sglang.radix_cache import LATENCY_SYNC_EVERY, HoleAwareRadixCache

TRUTH = (5e-3, 6e-5, 1e-9, 2e-5, 4e-8, 3e-3)


def cache(tp_size: int) -> HoleAwareRadixCache:
    allocator = SimpleNamespace(device="cpu", page_size=1)
    params = CacheInitParams(
        disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=allocator, page_size=1
    )
    config = AsymCacheConfig(tp_size=tp_size, chunking="adaptive")
    return HoleAwareRadixCache(params, config)


def feed(target: HoleAwareRadixCache, rng: np.random.Generator, n: int, slowdown: float) -> None:
    """``n`` timed forwards, alternating prefill-with-decodes and decode-only steps."""
    for i in range(n):
        decodes = rng.integers(100, 4000, int(rng.integers(1, 64))).tolist()
        if i % 2:
            start = int(rng.integers(0, 8000))
            features = BatchFeatures.from_segments(
                [(start, start + int(rng.integers(64, 4096)))], decodes
            )
        else:
            features = BatchFeatures.from_segments([], decodes)
        seconds = sum(c * x for c, x in zip(TRUTH, features.vector())) * slowdown
        target.observe_forward(features, seconds * (1 + rng.normal(0, 0.02)))


def chunk(target: HoleAwareRadixCache) -> int:
    running = [SimpleNamespace(seqlen=n) for n in (500, 1500, 3000)]
    return target.choose_chunk(prefix_len=2000, running_reqs=running, max_chunk=8192, page_size=1)


def test_tp1_publishes_every_update():
    single = cache(1)
    feed(single, np.random.default_rng(0), 200, 1.0)
    view = single.latency_cost.view
    assert view.ready and view.coefficients == single.latency_model.coefficients
    assert 0 < chunk(single) < 8192


def test_tp_ranks_decide_from_rank0_fit_between_syncs():
    rank0, rank1 = cache(2), cache(2)
    # Each rank times its own forwards; rank 1's GPU is "slower", so its own fit differs.
    feed(rank0, np.random.default_rng(1), 200, 1.0)
    feed(rank1, np.random.default_rng(2), 200, 1.6)
    assert rank0.latency_model.coefficients != rank1.latency_model.coefficients
    # Before any sync nothing is published: both fall back to the launch chunk and static costs.
    assert not rank0.latency_cost.view.ready and chunk(rank0) == chunk(rank1) == 8192

    sent: list[LatencyView] = []

    def from_rank0(local: LatencyView) -> LatencyView:
        sent.append(local)
        return sent[0]

    for _ in range(LATENCY_SYNC_EVERY):
        rank0.sync_latency(from_rank0)
        rank1.sync_latency(from_rank0)
        assert rank0.latency_cost.view == rank1.latency_cost.view == sent[0]
        assert chunk(rank0) == chunk(rank1) < 8192
        for start, end in ((0, 64), (4000, 4064)):
            cost0 = rank0.latency_cost.cost_per_token(start, end)
            assert cost0 == rank1.latency_cost.cost_per_token(start, end)
        # Fits go on between syncs; what decides does not move.
        feed(rank0, np.random.default_rng(3), 4, 1.0)
        feed(rank1, np.random.default_rng(4), 4, 1.6)
    assert len(sent) == 2  # one broadcast per LATENCY_SYNC_EVERY passes, on each rank
    before = sent[0]
    sent.clear()
    rank0.sync_latency(from_rank0)
    rank1.sync_latency(from_rank0)
    assert rank1.latency_cost.view == sent[0] != before
    assert rank0.latency_snapshot()["published_ready"] is True


@pytest.mark.parametrize("tp_size", [2, 4])
def test_tp_fit_is_not_published_by_updates(tp_size):
    rank = cache(tp_size)
    feed(rank, np.random.default_rng(5), 200, 1.0)
    assert rank.latency_model.ready and rank.latency_cost.view == LatencyView()
