"""The offline replay of recorded step timings, on a synthetic trace and on a recorded H100 one."""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from asymcache_sglang.core.latency_fit import BatchFeatures
from asymcache_sglang.core.latency_score import ScoreSums
from eval.replay_latency_trace import read_trace, replay

TRACES = Path(__file__).resolve().parent.parent / "eval" / "results" / "traces"


def test_replay_scores_served_predictions_and_finds_the_worst_step(tmp_path: Path):
    rng = np.random.default_rng(0)
    records = []
    for step in range(400):
        segments = [(0, int(rng.integers(64, 4096)))] if step % 4 == 0 else []
        features = BatchFeatures.from_segments(segments, [500] * int(rng.integers(1, 16)))
        seconds = 0.005 + 2e-5 * features.new_tokens + 1e-4 * features.decode_reqs
        record = {**asdict(features), "seconds": seconds, "predicted": 0.8 * seconds}
        records.append(record)
    records[200]["predicted"] = 0.0  # the served model's worst miss, a step beside decodes
    path = tmp_path / "trace.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.writelines(json.dumps(r) + "\n" for r in records)
    assert read_trace(path) == records

    scores = replay(read_trace(path))
    expected = ScoreSums()
    for record in records[32:]:  # the first min_samples steps are not scored
        expected.add(record["predicted"], record["seconds"])
    assert scores["as_served"]["r2"] == pytest.approx(expected.r2())
    assert scores["as_served"]["steps"] == len(records) - 32
    assert scores["replayed"]["r2"] > 0.99  # the truth is linear and noiseless
    worst = scores["worst_underpredicted_step_beside_decodes"]
    assert worst["seconds"] == records[200]["seconds"] and worst["served_prediction_s"] == 0.0
    assert worst["replayed_prediction_s"] == pytest.approx(worst["seconds"], rel=0.05)


def test_ceiling_catches_the_h100_runs_worst_miss():
    # Recorded at 9320fe9 on an H100: the served fit took a whole 6,000-token prompt beside 8
    # decodes as a 49 ms step; it took 152 ms.
    scores = replay(read_trace(TRACES / "h100_9320fe9_adaptive.jsonl.gz"))
    worst = scores["worst_underpredicted_step_beside_decodes"]
    assert worst["new_tokens"] == 6000 and worst["served_prediction_s"] < 0.05
    assert worst["seconds"] > 0.15
    assert worst["replayed_prediction_s"] == pytest.approx(worst["seconds"], rel=0.1)
    assert worst["replayed_chunk"] < 3000  # the budget rule would have split the prompt
    assert scores["replayed"]["r2"] > scores["as_served"]["r2"] + 0.05
