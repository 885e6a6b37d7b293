"""End to end on the CPU: real SGLang 0.5.16 servers, float32 tiny Llama, torch_native attention.

AsymCache (holes recomputed in multi-segment extends under a small KV pool) must give the same
tokens, and logprobs within 1e-4, as stock SGLang with the radix cache disabled.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import mixed_chunk_workload

from eval.common import asymcache_counters, server_health
from eval.workloads import (
    MultiTurnWorkload,
    generate_streaming,
    replay_inputs,
    run_concurrent_sessions,
    run_multi_turn,
)

pytestmark = pytest.mark.e2e

WORKLOAD = MultiTurnWorkload(num_sessions=8, turns=7, first_prompt_tokens=120)
LOGPROB_TOL = 1e-4
# server_health of a server whose scheduler survived its idle checks, with no leak lines.
HEALTHY = {"healthy_after_idle": True, "leak_or_error_lines": 0}


def test_holes_are_exact_against_no_cache(asymcache_server, no_cache_server, artifacts_dir):
    before = asymcache_counters(asymcache_server.url)
    ours = run_multi_turn(asymcache_server.url, WORKLOAD)
    # Let the scheduler go idle so SGLang's strict idle memory check runs after the last request.
    time.sleep(3)
    after = asymcache_counters(asymcache_server.url)
    ref = replay_inputs(no_cache_server.url, ours, WORKLOAD.max_new_tokens)
    delta = {k: after[k] - before.get(k, 0) for k in after}

    max_dlogprob = 0.0
    mismatched = []
    for a, b in zip(ours, ref):
        if a.output_ids != b.output_ids:
            mismatched.append((a.session, a.turn))
        diffs = [abs(x - y) for x, y in zip(a.output_logprobs, b.output_logprobs)]
        max_dlogprob = max([max_dlogprob, *diffs])
    summary = {
        "requests": len(ours),
        "counters": delta,
        "max_logprob_diff": max_dlogprob,
        "mismatched": mismatched,
        "cached_tokens_total": sum(r.cached_tokens for r in ours),
    }
    (artifacts_dir / "e2e_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))

    assert len(ours) >= 50
    # (i) holes occurred and were recomputed in multi-segment extends, counted by the server.
    assert delta["interior_evicted_tokens"] > 0
    assert delta["plans"] > 0 and delta["planned_hole_tokens"] > 0
    assert delta["adopted_hole_tokens"] > 0
    # (ii) exact: same greedy tokens, logprobs within tolerance.
    assert not mismatched, f"outputs differ for (session, turn) {mismatched}"
    assert max_dlogprob <= LOGPROB_TOL
    # (iii) cached_tokens counts retained tokens only (holes are recomputed, not hits).
    assert summary["cached_tokens_total"] == delta["cached_tokens"]
    assert all(r.cached_tokens <= len(r.input_ids) - 1 for r in ours)
    # (iv) the strict idle memory check never fired: it raises in the scheduler, killing it.
    assert server_health(asymcache_server) == HEALTHY


def test_mixed_chunk_holes_beside_decodes_are_exact(mixed_chunk_server, no_cache_server):
    """--enable-mixed-chunk: hole plans share forwards with running decodes, same tokens."""
    before = asymcache_counters(mixed_chunk_server.url)
    ours = []
    # Whether a plan lands beside a decode is timing on a shared CPU: up to 3 seeded rounds.
    for seed in range(3):
        workload = mixed_chunk_workload(seed)
        ours += run_concurrent_sessions(mixed_chunk_server.url, workload)
        time.sleep(3)
        after = asymcache_counters(mixed_chunk_server.url)
        delta = {k: after[k] - before.get(k, 0) for k in after}
        if delta["mixed_plan_batches"] > 0:
            break
    ref = [
        generate_streaming(no_cache_server.url, r.input_ids, workload.max_new_tokens) for r in ours
    ]
    mismatched = [(a.session, a.turn) for a, b in zip(ours, ref) if a.output_ids != b.output_ids]
    print(json.dumps({"counters": delta, "mismatched": mismatched}, indent=2))
    assert delta["plans"] > 0 and delta["mixed_plan_batches"] > 0, delta
    assert not mismatched, f"outputs differ for (session, turn) {mismatched}"
    assert server_health(mixed_chunk_server) == HEALTHY


# A first prompt of almost four chunks: an evicted head alone is recomputed over four (cheap heads
# go first), and the plan for the rest of the path is admitted in the last of them.
LONG_WORKLOAD = MultiTurnWorkload(
    num_sessions=8, turns=14, first_prompt_tokens=240, user_tokens_per_turn=16
)


def test_hole_plans_carried_over_chunks_are_exact(small_chunk_server, no_cache_server):
    """Hole plans larger than the chunk run over several passes, with and without mixed chunks.

    With mixed chunks sessions run concurrently and without logprobs (SGLang mixes only those).
    """
    server, mixed = small_chunk_server
    workload = LONG_WORKLOAD
    before = asymcache_counters(server.url)
    run = run_concurrent_sessions if mixed else run_multi_turn
    ours = run(server.url, workload)
    time.sleep(3)
    after = asymcache_counters(server.url)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    ref = [
        generate_streaming(
            no_cache_server.url, r.input_ids, workload.max_new_tokens, return_logprob=not mixed
        )
        for r in ours
    ]
    mismatched = [(a.session, a.turn) for a, b in zip(ours, ref) if a.output_ids != b.output_ids]
    dlogprobs = [
        abs(x - y) for a, b in zip(ours, ref) for x, y in zip(a.output_logprobs, b.output_logprobs)
    ]
    summary = {"counters": delta, "mismatched": mismatched, "max_dlogprob": max(dlogprobs or [0])}
    print(json.dumps(summary, indent=2))
    assert delta["interior_evicted_tokens"] > 0
    assert delta["plans"] > 0 and delta["chunked_plans"] > 0, delta
    assert after["longest_plan_chunks"] >= 3, after
    assert delta["chunk_fallbacks"] == 0, delta
    if mixed:
        assert delta["mixed_plan_batches"] > 0, delta
    else:
        assert dlogprobs and summary["max_dlogprob"] <= LOGPROB_TOL
    assert not mismatched, f"outputs differ for (session, turn) {mismatched}"
    assert server_health(server) == HEALTHY


def test_holes_under_lpm_admission_are_exact(lpm_server, no_cache_server):
    """--schedule-policy lpm: SGLang matches every waiting request each pass and sorts the queue
    by its contiguous match; plans still run and stay exact."""
    before = asymcache_counters(lpm_server.url)
    workload = mixed_chunk_workload(0)
    ours = run_concurrent_sessions(lpm_server.url, workload)
    time.sleep(3)
    after = asymcache_counters(lpm_server.url)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    ref = [
        generate_streaming(no_cache_server.url, r.input_ids, workload.max_new_tokens) for r in ours
    ]
    mismatched = [(a.session, a.turn) for a, b in zip(ours, ref) if a.output_ids != b.output_ids]
    print(json.dumps({"counters": delta, "mismatched": mismatched}, indent=2))
    assert len(ours) == workload.num_sessions * workload.turns
    assert delta["plans"] > 0 and delta["planned_holes_adopted"] > 0, delta
    assert not mismatched, f"outputs differ for (session, turn) {mismatched}"
    assert server_health(lpm_server) == HEALTHY
