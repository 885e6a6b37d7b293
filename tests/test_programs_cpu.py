"""Agent programs on a real CPU server: a request's SGLang ``session_id`` names its program, and
``/close_session`` (its last step) makes the KV only it held go first on eviction."""

from __future__ import annotations

import random

import pytest
import requests

from eval.common import asymcache_counters, server_health
from eval.workloads import LongMultiTurn, run_long_multi_turn

pytestmark = pytest.mark.e2e


def generate(url: str, input_ids: list[int], session_id: str | None = None) -> dict:
    payload = {
        "input_ids": input_ids,
        "sampling_params": {"max_new_tokens": 2, "temperature": 0.0, "ignore_eos": True},
    }
    if session_id is not None:
        payload["session_id"] = session_id
    resp = requests.post(f"{url}/generate", json=payload, timeout=300)
    resp.raise_for_status()
    return resp.json()


def test_closing_a_program_releases_only_its_own_kv(asymcache_server):
    url = asymcache_server.url
    requests.post(f"{url}/flush_cache?timeout=30", timeout=60).raise_for_status()
    rng = random.Random(5)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(10, 500) for _ in range(n)]

    prompt = tokens(64)
    fodder, waiting, done = tokens(500), prompt + tokens(96), prompt + tokens(400)
    # KV nobody names, then two programs. The one that ends has the deepest, costliest tail and
    # is the newest: the cost key alone would evict the shared prompt and the other's tail first.
    generate(url, fodder)
    generate(url, waiting, "program-waiting")
    generate(url, done, "program-done")
    before = asymcache_counters(url)["released_tokens"]
    resp = requests.post(f"{url}/close_session", json={"session_id": "program-done"}, timeout=60)
    resp.raise_for_status()
    released = asymcache_counters(url)["released_tokens"] - before
    # Its own 400 prompt tokens and its 2-token answer; the shared 64 stay (the other holds them).
    assert 400 <= released <= 400 + 2, released
    # Closing again, or a program never seen, releases nothing and breaks nothing.
    for session in ("program-done", "never-seen"):
        requests.post(f"{url}/close_session", json={"session_id": session}, timeout=60)
    assert asymcache_counters(url)["released_tokens"] - before == released
    # A request a little larger than the free pool: the released tail goes first, and only as
    # much of it as the request needs, from its head (a hole; the rest stays resident).
    pool = requests.get(f"{url}/get_server_info", timeout=60).json()["max_total_num_tokens"]
    counters = asymcache_counters(url)
    generate(url, tokens(pool - counters["resident_tokens"] + 20))
    assert asymcache_counters(url)["split_kept_tokens"] > counters["split_kept_tokens"]
    assert generate(url, waiting)["meta_info"]["cached_tokens"] >= 64 + 96 - 1
    assert 64 < generate(url, done)["meta_info"]["cached_tokens"] <= 64 + 400 - 20
    assert server_health(asymcache_server)["leak_or_error_lines"] == 0


def test_a_conversation_without_session_ids_is_one_program_through_the_scheduler(
    asymcache_server,
):
    """Holds are on by default: each request's first match names its program, its finish
    releases it, and the next turn (a prompt that begins with the last request) returns it."""
    url = asymcache_server.url
    rng = random.Random(11)
    before = asymcache_counters(url)
    history = [rng.randrange(10, 500) for _ in range(80)]
    for _ in range(3):
        out = generate(url, history)
        history = history + out["output_ids"] + [rng.randrange(10, 500) for _ in range(12)]
    after = asymcache_counters(url)
    assert after["return_gaps"] - before["return_gaps"] == 2  # turns 2 and 3 came back
    assert after["programs_in"] == 0
    assert after["programs_waiting"] == before["programs_waiting"] + 1
    assert server_health(asymcache_server)["leak_or_error_lines"] == 0


def test_named_long_sessions_close_after_their_last_turn(asymcache_server):
    """``LongMultiTurn(name_sessions=True)``: each conversation's requests name it and its last
    turn closes it, so the server releases the KV only it held."""
    url = asymcache_server.url
    before = asymcache_counters(url)
    workload = LongMultiTurn(
        sessions=2, turns=2, doc_tokens=(60, 80), question_tokens=(5, 10), answer_tokens=4,
        think_s=(0.1, 0.2), arrival_gap_s=0.1, vocab=(10, 500), seed=11, name_sessions=True,
    )  # fmt: skip
    results = run_long_multi_turn(url, workload)
    after = asymcache_counters(url)
    assert len(results) == 4
    assert after["released_tokens"] > before["released_tokens"]
    assert server_health(asymcache_server)["leak_or_error_lines"] == 0
