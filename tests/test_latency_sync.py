"""What eviction and chunking read: the published latency fit (per update, or TP rank 0's)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from sglang.srt.mem_cache.cache_init_params import CacheInitParams

from asymcache_sglang.core.config import AsymCacheConfig
from asymcache_sglang.core.latency_fit import BatchFeatures, LatencyView
from asymcache_sglang.core.pass_clock import PassClock
from asymcache_sglang.forward_timer import ForwardTimer
from asymcache_sglang.latency_runtime import LatencyRuntime
from asymcache_sglang.radix_cache import HoleAwareRadixCache
from asymcache_sglang.tp_agreement import LATENCY_SYNC_EVERY, RankZeroState, TpAgreement

TRUTH = (5e-3, 6e-5, 1e-9, 2e-5, 4e-8, 3e-3)


def runtime(tp_size: int) -> LatencyRuntime:
    return LatencyRuntime(AsymCacheConfig(tp_size=tp_size, chunking="adaptive"))


def feed(target: LatencyRuntime, rng: np.random.Generator, n: int, slowdown: float) -> None:
    """``n`` timed forwards: decode-only steps between extends, every other one with decodes."""
    for i in range(n):
        decodes = rng.integers(100, 4000, int(rng.integers(1, 64))).tolist()
        if i % 2:
            start = int(rng.integers(0, 8000))
            features = BatchFeatures.from_segments(
                [(start, start + int(rng.integers(64, 4096)))], decodes if i % 4 == 3 else []
            )
        else:
            features = BatchFeatures.from_segments([], decodes)
        seconds = sum(c * x for c, x in zip(TRUTH, features.vector())) * slowdown
        target.observe_forward(features, seconds * (1 + rng.normal(0, 0.02)))


def chunk(target: LatencyRuntime) -> int:
    """The chunk a pass beside three decodes gets: the launch chunk until the view is ready."""
    decision = target.choose_chunk(
        prefix_len=2000, decode_seq_lens=[500, 1500, 3000], max_chunk=8192, page_size=1
    )
    return 8192 if decision is None else decision.chunk


def test_the_cache_evicts_by_the_runtimes_published_cost():
    allocator = SimpleNamespace(device="cpu", page_size=1)
    params = CacheInitParams(
        disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=allocator, page_size=1
    )
    latency = runtime(1)
    cache = HoleAwareRadixCache(params, latency.config, latency)
    assert cache.tree.cost is latency.cost
    feed(latency, np.random.default_rng(0), 200, 1.0)
    assert latency.view.ready and latency.view.extend_ready
    expected = latency.cost.cost_per_token(4000, 4064)
    assert cache.tree.cost.cost_per_token(4000, 4064) == expected
    assert expected != latency.config.cost_model().cost_per_token(4000, 4064)


def test_tp1_publishes_every_update():
    single = runtime(1)
    feed(single, np.random.default_rng(0), 200, 1.0)
    view = single.view
    assert view.ready and view.coefficients == single.model.coefficients
    assert 0 < chunk(single) < 8192


def test_tp_ranks_decide_from_rank0_fit_between_syncs():
    rank0, rank1 = runtime(2), runtime(2)
    # Each rank times its own forwards; rank 1's GPU is "slower", so its own fit differs.
    feed(rank0, np.random.default_rng(1), 200, 1.0)
    feed(rank1, np.random.default_rng(2), 200, 1.6)
    assert rank0.model.coefficients != rank1.model.coefficients
    # Before any sync nothing is published: both fall back to the launch chunk and static costs.
    assert not rank0.view.ready and chunk(rank0) == chunk(rank1) == 8192

    agreements = [TpAgreement(rank, PassClock()) for rank in (rank0, rank1)]
    sent: list[RankZeroState] = []

    def from_rank0(local: RankZeroState) -> RankZeroState:
        sent.append(local)
        return sent[0]

    for _ in range(LATENCY_SYNC_EVERY):
        for agreement in agreements:
            agreement.on_pass(from_rank0)
        assert rank0.view == rank1.view == sent[0].view
        assert chunk(rank0) == chunk(rank1) < 8192
        for start, end in ((0, 64), (4000, 4064)):
            cost0 = rank0.cost.cost_per_token(start, end)
            assert cost0 == rank1.cost.cost_per_token(start, end)
        # Fits go on between syncs; what decides does not move.
        feed(rank0, np.random.default_rng(3), 4, 1.0)
        feed(rank1, np.random.default_rng(4), 4, 1.6)
    assert len(sent) == 2  # one broadcast per LATENCY_SYNC_EVERY passes, on each rank
    before = sent[0]
    sent.clear()
    for agreement in agreements:
        agreement.on_pass(from_rank0)
    assert rank1.view == sent[0].view != before.view
    assert rank0.snapshot().published_ready is True
    assert rank0.snapshot().as_json()["published_ready"] is True


@pytest.mark.parametrize("tp_size", [2, 4])
def test_tp_fit_is_not_published_by_updates(tp_size):
    rank = runtime(tp_size)
    feed(rank, np.random.default_rng(5), 200, 1.0)
    assert rank.model.ready and rank.view == LatencyView()


def test_the_trace_records_when_each_forward_was_launched(tmp_path):
    trace = tmp_path / "trace.jsonl"
    latency = LatencyRuntime(AsymCacheConfig(latency_trace_path=str(trace)))
    timer = ForwardTimer(latency.observe_forward, use_cuda=False)
    features = BatchFeatures.from_segments([(0, 64)], [])
    before = time.perf_counter()
    assert timer.time(features, lambda: "out") == "out"
    timer.time(features, lambda: None)
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(rows) == 2 and before <= rows[0]["launched_s"] <= rows[1]["launched_s"]
    assert all(r["seconds"] > 0 and r["new_tokens"] == 64 for r in rows)
