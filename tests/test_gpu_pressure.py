"""GPU: Llama-3-8B geometry (dummy weights) under KV pressure, AsymCache vs stock LRU and LFU.

Run on the GPU host after ``source .gpu/host_env.sh``; skipped without CUDA. Results go to
``$ASYMCACHE_RESULTS_DIR`` (default: pytest's tmp dir) as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eval.gpu_pressure import run_comparison
from eval.workloads import MultiTurnWorkload

pytestmark = pytest.mark.gpu

# 16 sessions x 13 turns = 208 requests; contexts grow to ~4.3K tokens, ~69K in all, 24K pool.
WORKLOAD = MultiTurnWorkload(
    num_sessions=16, turns=13, first_prompt_tokens=1024, user_tokens_per_turn=256,
    vocab_high=120000,
)  # fmt: skip
POOL_TOKENS = 24000


VARIANTS = {
    "asymcache-flashinfer": ["--asymcache-msa-impl", "flashinfer"],
    "asymcache-triton": ["--asymcache-msa-impl", "triton"],
}
BASELINES = {policy: ["--radix-eviction-policy", policy] for policy in ("lru", "lfu")}


def test_pressure_against_stock_policies(llama3_8b_geometry, tmp_path):
    out_dir = Path(os.environ.get("ASYMCACHE_RESULTS_DIR", tmp_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_comparison(
        llama3_8b_geometry,
        attention_backend="flashinfer",
        pool_tokens=POOL_TOKENS,
        workload=WORKLOAD,
        log_dir=out_dir,
        variants=VARIANTS,
        baselines=BASELINES,
    )
    (out_dir / "gpu_pressure_flashinfer.json").write_text(json.dumps(result, indent=2))
    for name, run in result["runs"].items():
        assert run["requests"] >= 200
        # The strict idle memory check raises in the scheduler; a dead server is unhealthy.
        assert run["healthy_after_idle"] and run["leak_or_error_lines"] == 0, name
    for name in VARIANTS:
        counters = result["runs"][name]["counters"]
        assert counters, f"the AsymCache plugin did not load in {name}"
        assert counters["evicted_tokens"] > 0, "no KV pressure"
        assert counters["plans"] > 0 and counters["adopted_hole_tokens"] > 0, name
