"""End to end on the CPU: adaptive chunking really sets the chunk size in a running server.

A real SGLang 0.5.16 CPU server with AsymCache times every forward (wall clock on the CPU) and
fits the latency model. Once it is ready, a long prompt arriving while another request decodes
gets a chunk below the launch-time --chunked-prefill-size (a 1 ms TPOT budget cannot fit more;
with --enable-mixed-chunk the decode shares that forward), and its answer is the one stock SGLang
gives.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from asymcache_sglang.core.config import LATENCY_TRACE_ENV
from eval.common import asymcache_counters, asymcache_latency
from eval.server import SGLangServer, cpu_env, cpu_server_args
from eval.workloads import generate_streaming

pytestmark = pytest.mark.e2e

LAUNCH_CHUNK = 512


@pytest.fixture(scope="module")
def adaptive_server(tiny_model: Path, artifacts_dir: Path) -> Iterator[SGLangServer]:
    args = [
        "--enable-asymcache",
        "--asymcache-chunking", "adaptive",
        "--chunked-prefill-size", str(LAUNCH_CHUNK),
        # Decodes share a prefill's forward only in mixed chunks; otherwise they wait it out.
        "--enable-mixed-chunk",
        "--asymcache-tpot-budget-ms", "1",
        # Wall-clock timings on a shared CI CPU are noisy (R^2 0.12 to 0.92 seen for the same
        # requests); this test is about the chunk hook, the readiness gate has its unit tests.
        "--asymcache-latency-min-r2", "0",
        "--max-total-tokens", "8000",
        "--enable-metrics",
    ]  # fmt: skip
    trace = artifacts_dir / "adaptive-latency-trace.jsonl"
    trace.unlink(missing_ok=True)  # the server appends; this run's forwards only
    server = SGLangServer(
        tiny_model,
        extra_args=cpu_server_args() + args,
        env={**cpu_env(), LATENCY_TRACE_ENV: str(trace)},
        log_path=artifacts_dir / "adaptive-chunking-server.log",
        timeout_s=420,
    )
    with server:
        yield server


def test_chunk_size_follows_the_latency_model(adaptive_server, no_cache_server):
    url = adaptive_server.url
    # The start-up profile's forwards were timed before the server reported ready.
    assert asymcache_latency(url)["samples"] >= 10
    rng = random.Random(0)

    def prompt(n: int) -> list[int]:
        return [rng.randrange(10, 500) for _ in range(n)]

    # Varied prefills and decodes, so every regressor is exercised and the fit becomes ready.
    for n in [16, 900, 64, 480, 32, 700, 128, 300, 48, 1000, 200, 600] * 3:
        generate_streaming(url, prompt(n), max_new_tokens=4)
    model = asymcache_latency(url)
    assert asymcache_counters(url)["timed_forwards"] >= model["samples"] >= 32
    trace_path = adaptive_server.log_path.parent / "adaptive-latency-trace.jsonl"
    trace = [json.loads(line) for line in trace_path.read_text().splitlines()]
    assert len(trace) >= model["samples"] and all(r["seconds"] > 0 for r in trace)
    assert {"new_tokens", "new_ctx", "decode_reqs", "decode_ctx", "predicted"} <= trace[-1].keys()
    launches = [r["launched_s"] for r in trace]
    assert launches == sorted(launches)
    assert model["ready"], model
    assert all(c >= 0 for c in model["coefficients"])

    long_prompt = prompt(1000)  # the no-cache server's pool holds 1200 tokens
    before = asymcache_counters(url)
    # No logprobs: SGLang does not mix batches that return them.
    background = threading.Thread(
        target=generate_streaming,
        args=(url, prompt(40), 120),
        kwargs={"return_logprob": False},
        daemon=True,
    )
    background.start()
    while asymcache_counters(url)["timed_forwards"] < before["timed_forwards"] + 5:
        time.sleep(0.05)  # until the background request is decoding
    beside_decode = generate_streaming(url, long_prompt, max_new_tokens=4, return_logprob=False)
    background.join(timeout=300)
    after = asymcache_counters(url)
    reference = generate_streaming(no_cache_server.url, long_prompt, max_new_tokens=4)

    assert after["budget_chunk_decisions"] > before["budget_chunk_decisions"]
    # A 1 ms budget beside a decode leaves the smallest chunk, below the launch-time size.
    below = after["budget_chunk_below_launch_size"] - before["budget_chunk_below_launch_size"]
    assert below == after["budget_chunk_decisions"] - before["budget_chunk_decisions"]
    assert 0 < asymcache_latency(url)["last_chunk"] <= LAUNCH_CHUNK
    # Chunked differently, the answer is the one stock SGLang gives without a cache.
    assert beside_decode.output_ids == reference.output_ids
    metrics = requests.get(f"{url}/metrics", timeout=60).text
    for name in (
        "asymcache:latency_r2",
        "asymcache:latency_coefficient",
        "asymcache:prefill_chunk",
    ):
        assert name in metrics, name
