"""AsymCache's cache on SGLang 0.5.16's own requests, allocator and pools on the CPU, no server:
the edge cases a server reaches only by timing or with models this CPU setup cannot run.

Requests that cannot take holes (multimodal inputs, input embeddings) are served from the
contiguous prefix of a match with holes, counted, never refused. Input embeddings never get that
far: SGLang refuses them unless the radix cache is disabled, which AsymCache refuses in turn;
``test_input_embeds_get_sglangs_own_refusal`` shows the refusal is a clean 400 that leaves the
server serving. And a chunk SGLang ended inside a page carries on as SGLang carries it."""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import pytest
import requests
import torch
from sglang.srt.managers.schedule_batch import MultimodalInputs, Req
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixKey
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import set_global_server_args_for_scheduler

from asymcache_sglang import handoff
from asymcache_sglang.core.config import AsymCacheConfig
from asymcache_sglang.latency_runtime import LatencyRuntime
from asymcache_sglang.radix_cache import HoleAwareRadixCache
from eval.sim.engine import default_server_args
from patches import prefill_adder_add_chunked_req

HEAD = list(range(100, 164))
TAIL = list(range(200, 264))


def cpu_cache(page_size: int = 1) -> HoleAwareRadixCache:
    """AsymCache's cache over SGLang's own CPU pools, as a scheduler builds it."""
    set_global_server_args_for_scheduler(default_server_args())
    allocator = TokenToKVPoolAllocator(1024, torch.float16, "cpu", None, False)
    params = CacheInitParams(
        disable=False,
        req_to_token_pool=ReqToTokenPool(4, 512, "cpu", False),
        token_to_kv_pool_allocator=allocator,
        page_size=page_size,
    )
    config = AsymCacheConfig(holds="off")
    return HoleAwareRadixCache(params, config, LatencyRuntime(config))


def cache_with_a_hole() -> HoleAwareRadixCache:
    """A cache holding HEAD + TAIL, with HEAD's KV evicted: a hole in front of a resident tail."""
    cache = cpu_cache()
    allocator = cache.token_to_kv_pool_allocator
    tree = cache.tree
    tree.insert(array("q", HEAD), allocator.alloc(len(HEAD)), [])
    out = tree.insert(array("q", HEAD + TAIL), allocator.alloc(len(HEAD + TAIL)), [])
    allocator.free(torch.cat(out.duplicates))
    head = out.last_node.parent
    allocator.free(tree.evict_node(head))
    assert head.value is None and out.last_node.value is not None
    return cache


def request(prompt: list[int]) -> Req:
    params = SamplingParams(max_new_tokens=4)
    params.normalize(None)
    return Req("r", "", array("q", prompt), params)


def match(cache: HoleAwareRadixCache, req: Req):
    key = RadixKey(array("q", req.origin_input_ids), req.extra_key)
    return cache.match_prefix(MatchPrefixParams(key=key, req=req))


def test_a_token_request_gets_the_hole_plan():
    cache = cache_with_a_hole()
    req = request(HEAD + TAIL + [7, 8])
    result = match(cache, req)
    plan = handoff.request_plan(req).matched
    assert plan is not None and plan.recompute == [(0, len(HEAD))]
    assert plan.retained == [(len(HEAD), len(HEAD + TAIL))]
    assert len(result.device_indices) == 0
    assert cache.counters.unplannable_matches == 0


@pytest.mark.parametrize("kind", ["multimodal_inputs", "input_embeds"])
def test_a_request_that_cannot_take_holes_falls_back_to_the_contiguous_prefix(kind):
    cache = cache_with_a_hole()
    req = request(HEAD + TAIL + [7, 8])
    if kind == "multimodal_inputs":
        req.multimodal_inputs = MultimodalInputs(mm_items=[])
    else:
        req.input_embeds = [[0.0] * 8 for _ in req.origin_input_ids]
    result = match(cache, req)
    # No plan: the contiguous prefix (none, the head is a hole) and the rest recomputed.
    assert handoff.request_plan(req).matched is None
    assert len(result.device_indices) == 0 and result.last_device_node is cache.root_node
    assert cache.counters.unplannable_matches == 1
    assert cache.stats_snapshot()["unplannable_matches"] == 1


@pytest.mark.e2e
def test_input_embeds_get_sglangs_own_refusal(asymcache_server):
    body = {"input_embeds": [[0.0] * 64] * 4, "sampling_params": {"max_new_tokens": 2}}
    refused = requests.post(f"{asymcache_server.url}/generate", json=body, timeout=60)
    assert refused.status_code == 400
    assert "input_embeds" in refused.json()["error"]["message"]
    ok = {"input_ids": [11, 12, 13, 14], "sampling_params": {"max_new_tokens": 2}}
    assert requests.post(f"{asymcache_server.url}/generate", json=ok, timeout=60).ok


def test_a_chunk_that_ended_inside_a_page_carries_on_as_sglang_does():
    """SGLang cuts a chunked request at the pool's room, which can end inside a page the tree
    cannot hold yet: the next chunk goes on from it without a match (the partial page stays the
    request's), and a plan whose end it had not reached counts as a chunk fallback."""
    cache = cpu_cache(page_size=4)
    adder = SimpleNamespace(tree_cache=cache)
    # No init_next_round_input: a match would raise here.
    req = SimpleNamespace(prefix_indices=torch.arange(10), last_node=cache.root_node)
    handoff.request_plan(req).plan_end = 16
    carried = []
    result = prefill_adder_add_chunked_req.hook(
        lambda a, r: carried.append((a, r)) or "sglang's result", adder, req
    )
    assert result == "sglang's result" and carried == [(adder, req)]
    assert len(req.prefix_indices) == 10 and req.last_node is cache.root_node
    assert cache.counters.chunk_fallbacks == 1
