"""The eviction benchmark builds the caches it says and evicts through their SGLang interface."""

from __future__ import annotations

import pytest

from eval.evict_bench import build, count_nodes, run, time_evictions


@pytest.mark.parametrize("cache", ["lru", "asymcache", "asymcache-no-holds"])
def test_every_turn_is_a_node_and_evictions_free_a_tenth(cache):
    engine = build(cache, sessions=20, turns=5, turn_tokens=8, seed=0)
    assert count_nodes(engine.cache) == 1 + 20 * 5  # the shared prompt, then a node a turn
    evictable = engine.cache.evictable_size()
    assert evictable == 256 + 20 * 5 * 8
    if cache == "asymcache":  # every session a waiting program, each owning its turns
        assert len(engine.cache.tree._owned) == 20 and engine.cache.programs.ready
    timed = time_evictions(engine, call_tokens=16, max_calls=1000)
    assert timed["freed_tokens"] >= evictable // 10
    assert timed["calls"] == timed["seconds"]["count"] >= timed["freed_tokens"] // 24
    assert engine.allocator.available_size() >= timed["freed_tokens"]


def test_the_result_names_every_cache_and_call_size():
    result = run(
        sessions=5, turns=3, turn_tokens=400, caches=["lfu", "asymcache"], max_calls=5, seed=1
    )
    assert set(result["caches"]) == {"lfu", "asymcache"}
    assert set(result["caches"]["lfu"]) == {"build_s", "16", "1024", "8192"}
    assert result["caches"]["asymcache"]["16"]["nodes"] == 16
    later = result["caches"]["asymcache"]["8192"]["evictable_tokens"]
    assert later < result["caches"]["asymcache"]["16"]["evictable_tokens"]
