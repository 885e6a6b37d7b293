"""The Mooncake trace as token ids: blocks, cuts, and a replay against a real CPU server."""

from __future__ import annotations

import json

import pytest
import requests

from eval.mooncake_trace import (
    BLOCK_TOKENS,
    DEFAULT_TRACE,
    TRACE_NAME,
    TraceCut,
    block_tokens,
    load_trace,
    replay,
    write_cut,
)

LINES = [
    {"timestamp": 1000, "input_length": 700, "output_length": 5, "hash_ids": [0, 1]},
    {"timestamp": 1000, "input_length": 1200, "output_length": 0, "hash_ids": [0, 1, 2]},
    {"timestamp": 4000, "input_length": 300, "output_length": 9, "hash_ids": [0]},
    {"timestamp": 9000, "input_length": 1024, "output_length": 7, "hash_ids": [3, 4]},
]


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    return path


def test_a_hash_id_is_one_fixed_block():
    block = block_tokens(7, (10, 500), 0)
    assert len(block) == BLOCK_TOKENS and all(10 <= t < 500 for t in block)
    assert block == block_tokens(7, (10, 500), 0) != block_tokens(7, (10, 500), 1)
    assert block != block_tokens(8, (10, 500), 0)


def test_requests_share_the_tokens_of_shared_blocks(trace_file):
    reqs = load_trace(TraceCut(vocab=(10, 500)), trace_file)
    assert [len(r.input_ids) for r in reqs] == [700, 1200, 300, 1024]
    assert reqs[0].input_ids == reqs[1].input_ids[:700]  # blocks 0, 1 in common
    assert reqs[2].input_ids == reqs[0].input_ids[:300]  # block 0, cut
    assert reqs[3].input_ids[:512] != reqs[0].input_ids[:512]
    assert [r.output_tokens for r in reqs] == [5, 1, 9, 7]  # at least one token
    assert [r.arrival_s for r in reqs] == [0.0, 0.0, 3.0, 8.0]


def test_cut_scales_time_samples_and_caps(trace_file):
    cut = TraceCut(time_scale=0.5, start=1, sample_every=2, max_output_tokens=3)
    assert [(r.index, r.arrival_s, r.output_tokens) for r in load_trace(cut, trace_file)] == [
        (1, 0.0, 1),
        (3, 4.0, 3),
    ]
    short = TraceCut(max_input_tokens=1024, max_requests=2)
    assert [r.index for r in load_trace(short, trace_file)] == [0, 2]
    with pytest.raises(ValueError, match="time_scale"):
        TraceCut(time_scale=0)
    with pytest.raises(ValueError, match="token id range"):
        TraceCut(vocab=(5, 5))


def test_every_nth_conversation_is_kept_whole(trace_file):
    # conversations by second block, first appearance: lines 0-1 (block 1), 2 (one block), 3
    kept = load_trace(TraceCut(conversation_every=2), trace_file)
    assert [r.index for r in kept] == [0, 1, 3]
    assert [r.index for r in load_trace(TraceCut(conversation_every=3), trace_file)] == [0, 1]
    with pytest.raises(ValueError, match="conversation_every"):
        TraceCut(conversation_every=0)


@pytest.mark.parametrize("name", ["cut.jsonl", "cut.jsonl.gz"])
def test_a_written_cut_replays_the_same_requests(trace_file, tmp_path, name):
    cut = TraceCut(time_scale=0.5, conversation_every=2, max_output_tokens=6, vocab=(10, 500))
    dest = tmp_path / name
    assert write_cut(cut, dest, trace_file) == 3
    again = TraceCut(time_scale=0.5, max_output_tokens=6, vocab=(10, 500), trace_path=str(dest))
    want, got = load_trace(cut, trace_file), load_trace(again)
    assert [(r.arrival_s, r.input_ids, r.output_tokens) for r in got] == [
        (r.arrival_s, r.input_ids, r.output_tokens) for r in want
    ]


def test_a_line_with_too_few_blocks_is_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**LINES[0], "input_length": 1500}) + "\n")
    with pytest.raises(ValueError, match="2 blocks < 1500 tokens"):
        load_trace(TraceCut(), path)


@pytest.mark.skipif(not (DEFAULT_TRACE / TRACE_NAME).exists(), reason="shared trace not present")
def test_the_shared_trace_opens_with_its_system_prompt_block():
    reqs = load_trace(TraceCut(max_requests=50))
    assert len(reqs) == 50 and all(r.hash_ids[0] == 0 for r in reqs)
    assert len({tuple(r.input_ids[:BLOCK_TOKENS]) for r in reqs if len(r.input_ids) >= 512}) == 1
    assert all(len(r.input_ids) <= BLOCK_TOKENS * len(r.hash_ids) for r in reqs)


@pytest.mark.skipif(not (DEFAULT_TRACE / TRACE_NAME).exists(), reason="shared trace not present")
def test_replay_against_a_cpu_server_reuses_the_shared_block(asymcache_server):
    cut = TraceCut(time_scale=0.001, max_requests=6, max_input_tokens=1000, max_output_tokens=4,
                   vocab=(10, 500))  # fmt: skip
    reqs = load_trace(cut)
    requests.post(f"{asymcache_server.url}/flush_cache?timeout=30", timeout=60).raise_for_status()
    results = replay(asymcache_server.url, reqs, max_in_flight=2)
    assert [r.meta["trace_index"] for r in results] == [r.index for r in reqs]
    assert all(len(r.output_ids) == q.output_tokens for r, q in zip(results, reqs))
    # Every request starts with block 0: once one has finished, the others can reuse it.
    assert sum(r.cached_tokens >= BLOCK_TOKENS for r in results) >= 1
