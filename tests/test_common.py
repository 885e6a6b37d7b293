"""The helpers every eval harness shares (``eval.common``): the percentile rule and the header."""

from __future__ import annotations

import statistics

import pytest

from eval.common import (
    counters_since,
    percentile,
    result_header,
    seconds_fields,
    summarize_requests,
    summary_stats,
)
from eval.workloads import TurnResult, ttft_stages


def test_percentile_is_nearest_rank():
    xs = [1.0, 2.0, 3.0, 4.0]
    assert [percentile(xs, q) for q in (0.25, 0.5, 0.9, 0.99, 1.0)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert percentile(list(range(1, 101)), 0.99) == 99
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_percentile_sorts_its_input():
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.0
    assert percentile(iter([3.0, 1.0, 2.0]), 0.0) == 1.0


def test_summary_stats_use_the_one_rule():
    xs = [0.5, 0.1, 0.4, 0.2, 0.3, 0.6, 0.9, 0.8, 0.7, 1.0]
    stats = summary_stats(xs)
    assert stats == {
        "count": 10,
        "max": 1.0,
        "mean": statistics.mean(xs),
        "p50": percentile(xs, 0.5),
        "p90": percentile(xs, 0.9),
        "p99": percentile(xs, 0.99),
    }
    assert (stats["p50"], stats["p90"], stats["p99"]) == (0.5, 0.9, 1.0)
    with pytest.raises(ValueError):
        summary_stats([])


def test_result_header(monkeypatch):
    monkeypatch.setenv("ASYMCACHE_COMMIT", "abc123")
    header = result_header()
    assert list(header) == ["card", "commit", "date"]
    assert header["commit"] == "abc123"
    assert header["date"].endswith("+00:00")


def test_seconds_fields_name_mean_and_percentiles():
    fields = seconds_fields("jct", [4.0, 1.0, 3.0, 2.0])
    assert fields == {"jct_mean_s": 2.5, "jct_p50_s": 2.0, "jct_p90_s": 4.0, "jct_p99_s": 4.0}
    with pytest.raises(ValueError):
        seconds_fields("ttft", [])


def test_ttft_stages_split_the_ttft_at_the_servers_timestamps():
    meta = {
        "request_received_ts": 100.002,
        "forward_entry_time": 100.010,
        "queue_time": 0.005,
        "prefill_finished_time": 100.050,
    }
    stages = ttft_stages(100.0, 100.053, meta)
    assert stages == pytest.approx(
        {"to_server": 0.002, "to_queue": 0.003, "queued": 0.005, "prefill": 0.040,
         "to_client": 0.003}
    )  # fmt: skip
    assert sum(stages.values()) == pytest.approx(0.053)
    # A server without --enable-metrics (or behind the detokenizer) sends no scheduler times.
    assert ttft_stages(100.0, 100.053, {"queue_time": 0.0}) is None


def test_stage_summary_needs_every_request_to_carry_stages():
    def turn(stages: dict | None) -> TurnResult:
        meta = {"ttft_stages": stages} if stages else {}
        return TurnResult(0, 0, [1, 2], [3], [], 0, 0.05, 0.06, meta)

    one = {"to_server": 0.001, "queued": 0.01}
    two = {"to_server": 0.003, "queued": 0.03}
    summary = summarize_requests([turn(one), turn(two)])["ttft_stages"]
    assert summary["queued"]["mean"] == pytest.approx(0.02)
    assert summary["to_server"]["p90"] == 0.003
    assert "ttft_stages" not in summarize_requests([turn(one), turn(None)])


def test_counters_since_subtracts_totals_and_keeps_gauges():
    before = {"plans": 3, "evicted_tokens": 10, "resident_tokens": 500, "programs_waiting": 2}
    after = {"plans": 5, "evicted_tokens": 14, "resident_tokens": 120, "programs_waiting": 1,
             "fallback_plans": 1}  # fmt: skip
    assert counters_since({}, after) == after
    assert counters_since(before, after) == {
        "plans": 2, "evicted_tokens": 4, "resident_tokens": 120, "programs_waiting": 1,
        "fallback_plans": 1,
    }  # fmt: skip
