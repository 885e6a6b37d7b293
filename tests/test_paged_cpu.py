"""``--page-size`` 4 and 16 on the CPU: holes and retained ranges on whole pages, plans carried
over page-aligned chunks, the same tokens (logprobs within 1e-4) as stock SGLang with the radix
cache disabled.

SGLang 0.5.16's paged allocator runs Triton kernels, which have no CPU driver, so the server runs
them in Triton's interpreter (``conftest.paged_cpu_env``): SGLang's own allocation, on the CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cpu_asymcache_server, mixed_chunk_workload, paged_cpu_env

from eval.common import asymcache_counters, server_health
from eval.server import SGLangServer
from eval.workloads import (
    MultiTurnWorkload,
    generate_streaming,
    run_concurrent_sessions,
    run_multi_turn,
)

pytestmark = pytest.mark.e2e

LOGPROB_TOL = 1e-4
# Long enough first prompts that holes span several pages and plans outgrow the chunk.
WORKLOAD = MultiTurnWorkload(
    num_sessions=8, turns=8, first_prompt_tokens=200, user_tokens_per_turn=18
)
CHUNK_TOKENS = 64
POOL_TOKENS = 1600


@pytest.fixture(scope="module", params=[4, 16])
def paged_server(
    request: pytest.FixtureRequest, tiny_model: Path, artifacts_dir: Path
) -> Iterator[tuple[SGLangServer, int]]:
    page_size = request.param
    flags = [
        "--page-size", str(page_size),
        "--chunked-prefill-size", str(CHUNK_TOKENS),
        "--max-total-tokens", str(POOL_TOKENS),  # the later flag wins
    ]  # fmt: skip
    log_path = artifacts_dir / f"asymcache-page{page_size}-server.log"
    with cpu_asymcache_server(tiny_model, log_path, *flags, env=paged_cpu_env(page_size)) as server:
        yield server, page_size


def test_paged_holes_are_exact_against_no_cache(paged_server, no_cache_server, artifacts_dir):
    server, page_size = paged_server
    before = asymcache_counters(server.url)
    ours = run_multi_turn(server.url, WORKLOAD)
    time.sleep(3)  # idle: SGLang's strict memory check runs
    after = asymcache_counters(server.url)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    ref = [
        generate_streaming(no_cache_server.url, r.input_ids, WORKLOAD.max_new_tokens) for r in ours
    ]
    mismatched = [(a.session, a.turn) for a, b in zip(ours, ref) if a.output_ids != b.output_ids]
    dlogprobs = [
        abs(x - y) for a, b in zip(ours, ref) for x, y in zip(a.output_logprobs, b.output_logprobs)
    ]
    summary = {
        "page_size": page_size,
        "requests": len(ours),
        "counters": delta,
        "mismatched": mismatched,
        "max_dlogprob": max(dlogprobs or [0]),
    }
    (artifacts_dir / f"paged{page_size}_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    assert delta["interior_evicted_tokens"] > 0 and delta["plans"] > 0, delta
    # Plans carried over several page-aligned chunks: cut to the chunk (chunked_plans), or
    # waiting while chunks recompute a first hole larger than the chunk (first_hole_chunks).
    assert after["longest_plan_chunks"] >= 2 and delta["adopted_hole_tokens"] > 0, delta
    # Cache hits are whole pages: a hit never reaches into the partial last page.
    assert all(r.cached_tokens % page_size == 0 for r in ours)
    assert not mismatched, f"outputs differ for (session, turn) {mismatched}"
    assert dlogprobs and summary["max_dlogprob"] <= LOGPROB_TOL
    assert server_health(server) == {"healthy_after_idle": True, "leak_or_error_lines": 0}


def test_paged_plans_beside_decodes_are_exact(tiny_model, no_cache_server, artifacts_dir):
    """Page 4 with ``--enable-mixed-chunk``: decodes take part of the chunk, and SGLang would cut
    a chunked request inside a page; its chunks stay whole pages, so its plan carries on."""
    flags = ["--page-size", "4", "--chunked-prefill-size", str(CHUNK_TOKENS)]
    flags.append("--enable-mixed-chunk")
    log_path = artifacts_dir / "asymcache-page4-mixed-server.log"
    with cpu_asymcache_server(tiny_model, log_path, *flags, env=paged_cpu_env(4)) as server:
        ours = []
        for seed in range(2):
            ours += run_concurrent_sessions(server.url, mixed_chunk_workload(seed))
        time.sleep(3)
        counters = asymcache_counters(server.url)
        health = server_health(server)
    ref = [
        generate_streaming(no_cache_server.url, r.input_ids, 24, return_logprob=False) for r in ours
    ]
    mismatched = [(a.session, a.turn) for a, b in zip(ours, ref) if a.output_ids != b.output_ids]
    print(json.dumps({"counters": counters, "mismatched": mismatched}, indent=2))
    assert counters["plans"] > 0 and counters["chunk_fallbacks"] == 0, counters
    assert not mismatched, f"outputs differ for (session, turn) {mismatched}"
    assert health == {"healthy_after_idle": True, "leak_or_error_lines": 0}
