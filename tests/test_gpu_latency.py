"""Adaptive vs static chunking and the latency model's fit; the GPU run is marked ``gpu``.

On the GPU host: Llama-3-8B geometry with dummy weights, results to
``$ASYMCACHE_RESULTS_DIR/latency_bench.json``. The CPU tests check the pure summaries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from eval.latency_bench import (
    MixedWorkload,
    bench_server_args,
    inter_token_gaps_s,
    measure_mixed,
    plot,
    run_chunking_comparison,
    summarize_mixed,
)
from eval.server import SGLangServer
from eval.workloads import TurnResult, tpot_s


def result(ttft: float, latency: float, tokens: int) -> TurnResult:
    """Tokens streamed one per chunk, evenly spaced after the first."""
    step = (latency - ttft) / max(1, tokens - 1)
    arrivals = [(ttft + i * step, i + 1) for i in range(tokens)]
    meta = {"arrivals": arrivals}
    return TurnResult(0, 0, [1], list(range(tokens)), [0.0] * tokens, 0, ttft, latency, meta)


def test_tpot_excludes_the_first_token():
    assert tpot_s(result(0.5, 1.5, 11)) == pytest.approx(0.1)
    assert tpot_s(result(0.5, 0.5, 1)) is None


def test_inter_token_gaps_split_multi_token_chunks():
    res = result(0.1, 0.1, 1)
    res.meta["arrivals"] = [(0.1, 1), (0.2, 2), (0.2, 2), (0.8, 5)]
    assert inter_token_gaps_s(res) == pytest.approx([0.1, 0.2, 0.2, 0.2])
    assert inter_token_gaps_s(result(0.5, 0.5, 1)) == []


def test_summary_numbers():
    decodes = [result(0.1, 0.1 + 0.02 * 9, 10), result(0.1, 0.1 + 0.04 * 9, 10), result(1, 1, 1)]
    prefills = [result(0.3, 0.4, 4), result(0.5, 0.6, 4)]
    summary = summarize_mixed(decodes, prefills)
    assert summary["decode_requests"] == 3 and summary["long_prompt_requests"] == 2
    assert summary["tpot_mean_s"] == pytest.approx(0.03)
    assert summary["tpot_p90_s"] == pytest.approx(0.04)
    # 18 gaps, nine of 0.02 s and nine of 0.04 s: the nearest-rank median is the 9th.
    assert summary["itl_p50_s"] == pytest.approx(0.02)
    assert summary["itl_p99_s"] == summary["itl_max_s"] == pytest.approx(0.04)
    assert summary["long_ttft_mean_s"] == pytest.approx(0.4)


@pytest.mark.gpu
def test_adaptive_against_static_chunking(llama3_8b_geometry, tmp_path):
    out_dir = Path(os.environ.get("ASYMCACHE_RESULTS_DIR", tmp_path))
    res = run_chunking_comparison(
        llama3_8b_geometry, workload=MixedWorkload(), base_args=bench_server_args(), log_dir=out_dir
    )
    (out_dir / "latency_bench.json").write_text(json.dumps(res, indent=1))
    plot(res, out_dir / "latency_bench.png")
    print(json.dumps(res["ratios_static_over_adaptive"], indent=1))
    for name, run in res["runs"].items():
        assert run["healthy_after_idle"] and run["leak_or_error_lines"] == 0, name
    adaptive = res["runs"]["adaptive"]
    assert adaptive["latency_model"]["ready"], adaptive["latency_model"]
    assert adaptive["counters"]["budget_chunk_decisions"] > 0
    assert res["runs"]["static"]["counters"]["chunk_decisions"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs"
)
def test_adaptive_chunking_with_tp2(llama3_8b_geometry, tmp_path):
    """TP 2: every rank decides from rank 0's broadcast fit; a divergent chunk would hang."""
    out_dir = Path(os.environ.get("ASYMCACHE_RESULTS_DIR", tmp_path))
    args = [
        *bench_server_args(max_total_tokens=60000),
        "--tp-size", "2", "--enable-asymcache", "--asymcache-chunking", "adaptive",
    ]  # fmt: skip
    workload = MixedWorkload(long_prompts=6)
    with SGLangServer(
        llama3_8b_geometry, extra_args=args, log_path=out_dir / "chunking-tp2.log", timeout_s=600
    ) as server:
        run = measure_mixed(server, workload)
    (out_dir / "latency_tp2.json").write_text(json.dumps(run, indent=1))
    print(json.dumps({k: v for k, v in run.items() if k != "counters"}, indent=1))
    assert run["healthy_after_idle"] and run["leak_or_error_lines"] == 0
    assert run["long_prompt_requests"] == workload.long_prompts
    assert run["latency_model"]["published_ready"]
    assert run["counters"]["budget_chunk_decisions"] > 0
