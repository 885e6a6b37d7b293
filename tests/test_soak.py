"""The soak on the CPU: 2,000 requests of concurrent multi-turn sessions under the e2e pool, with
disconnects, aborts by rid, abort-all, ``max_new_tokens`` 0, prompts past the pool and bursts
that force retraction (``eval.soak``). After it the server must be whole: healthy after idle, no
leak, double-free or traceback line, its counters adding up, and a fixed multi-turn workload's
outputs equal to the no-cache server's. And the idle memory check it relies on is live: a server
that leaks one slot on purpose is caught by it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests
from conftest import E2E_POOL_TOKENS, cpu_asymcache_server, paged_cpu_env

from eval.common import asymcache_counters, server_health
from eval.server import cpu_env
from eval.soak import ACTIONS, SoakConfig, run_soak
from eval.workloads import MultiTurnWorkload, replay_inputs, run_multi_turn

pytestmark = pytest.mark.e2e

SOAK = SoakConfig(requests=2000, pool_tokens=E2E_POOL_TOKENS)
AFTER = MultiTurnWorkload(num_sessions=6, turns=5, first_prompt_tokens=120, seed=3)
LOGPROB_TOL = 1e-4
LEAK_SITE = Path(__file__).resolve().parent / "leak_one_slot"


@pytest.fixture(scope="module", params=[1, 4], ids=["page1", "page4"])
def soak_server(request, tiny_model, artifacts_dir):
    """The soak's server, with pages of one token and of four."""
    page_size = request.param
    log = artifacts_dir / f"soak-page{page_size}-server.log"
    flags = ("--page-size", str(page_size))
    with cpu_asymcache_server(tiny_model, log, *flags, env=paged_cpu_env(page_size)) as server:
        yield server


def test_soak_leaves_the_server_whole(soak_server, no_cache_server, artifacts_dir):
    at_start = asymcache_counters(soak_server.url)
    result = run_soak(soak_server.url, SOAK)
    health = server_health(soak_server)
    counters = asymcache_counters(soak_server.url)
    after = run_multi_turn(soak_server.url, AFTER)
    time.sleep(3)  # idle: SGLang's strict memory check runs again
    reference = replay_inputs(no_cache_server.url, after, AFTER.max_new_tokens)
    summary = {**result, "health": health, "counters": counters}
    (artifacts_dir / f"soak_{soak_server.log_path.stem}.json").write_text(
        json.dumps(summary, indent=2)
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))

    # The start-up latency profile closes its programs: only SGLang's own warmup request waits.
    assert at_start["programs_waiting"] <= 1 and at_start["return_gaps"] == 0
    outcomes = result["outcomes"]
    assert sum(result["sent"].values()) >= SOAK.requests
    assert all(result["sent"].get(action, 0) >= 20 for action in ACTIONS), result["sent"]
    # Every kind of trouble happened: cuts, aborts (by rid and by abort-all), refusals of
    # prompts past the pool, and retractions.
    assert outcomes["cut_before_first_chunk:cut"] and outcomes["cut_after_first_chunk:cut"]
    assert outcomes["abort_by_rid:aborted"] > 0
    assert result["abort_alls"] >= 4 and result["bursts"] >= 3
    assert result["retractions"] > 0
    assert set(k for k in outcomes if k.startswith("too_long")) <= {
        "too_long:http_400", "too_long:aborted"
    }  # fmt: skip
    # max_new_tokens 0 is served (prefill only), not refused.
    assert outcomes["zero_new_tokens:finished"] > 0
    # Whole: the idle check passed, nothing in the log.
    assert health == {"healthy_after_idle": True, "leak_or_error_lines": 0}
    assert server_health(soak_server) == health
    # Holes engaged, and every planned hole token is accounted for once idle.
    assert counters["plans"] > 0 and counters["interior_evicted_tokens"] > 0
    assert counters["planned_hole_tokens"] == (
        counters["planned_holes_adopted"]
        + counters["planned_holes_refilled_first"]
        + counters["planned_holes_discarded"]
    )
    # Then exact: a fixed multi-turn workload gives the no-cache server's tokens and logprobs.
    for ours, ref in zip(after, reference, strict=True):
        assert ours.output_ids == ref.output_ids, (ours.session, ours.turn)
        diffs = [abs(a - b) for a, b in zip(ours.output_logprobs, ref.output_logprobs)]
        assert max(diffs, default=0.0) <= LOGPROB_TOL


def test_the_idle_memory_check_catches_one_leaked_slot(tiny_model, artifacts_dir):
    """``leak_one_slot/sitecustomize.py`` makes a 37-token request's cache insert keep one slot it
    never frees; SGLang's strict idle check must see the pool short by one and stop the
    scheduler. Without this, a clean soak would not show that the check ran."""
    env = cpu_env()
    env["PYTHONPATH"] = f"{LEAK_SITE}:{env['PYTHONPATH']}"
    env["ASYMCACHE_TEST_LEAK_ONE_SLOT"] = "37"
    log = artifacts_dir / "leak-server.log"
    server = cpu_asymcache_server(tiny_model, log, env=env)
    server.start()
    try:
        body = {"input_ids": list(range(20, 57)), "sampling_params": {"max_new_tokens": 2}}
        try:
            requests.post(f"{server.url}/generate", json=body, timeout=120)
        except requests.ConnectionError:
            pass  # the check may stop the server before its reply reaches the client; the log tells
        deadline = time.monotonic() + 60
        while "memory leak detected" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(1)
        text = log.read_text(errors="replace")
        assert "leaked one slot on purpose" in text
    finally:
        server.stop()
