"""The engage benchmark: workload size, the model's position cost, the summary, and paired and
round-by-round runs on two real CPU servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import engage
from eval.common import read_json
from eval.engage import merge, model_relative_cost, summary
from eval.server import SGLangServer, cpu_env, cpu_server_args, stock_cpu_env
from eval.workloads import LongMultiTurn

# Two CPU servers side by side: bounded pools, or the first takes most of the host's memory.
POOL = ["--max-total-tokens", "8192"]
RECORDED = Path(__file__).resolve().parents[1] / "eval" / "results" / "h200_engage.json.gz"


def fit(coefficients: list[float], ready: bool = True) -> dict:
    return {"coefficients": coefficients, "ready": ready}


def test_live_tokens_bound_every_session_at_its_last_turn():
    workload = LongMultiTurn(sessions=2, turns=3, doc_tokens=(100, 200), question_tokens=(5, 10))
    assert workload.max_live_tokens() == 2 * (200 + 3 * (10 + 32))


def test_model_relative_cost_is_evictions_cost_at_that_extend_size():
    assert (
        model_relative_cost(fit([1e-3, 2e-5, 1.5e-9, 0, 0, 1e-3], ready=False), 8192, 2048) is None
    )
    # No position term: every position costs the same.
    assert model_relative_cost(fit([1e-3, 2e-5, 0.0, 0, 0, 1e-3]), 49152, 2048) == 1.0
    # fixed / new + c1 + c2 * mean position, over the same at [0, new).
    fixed, c1, c2 = 2e-3, 2e-5, 1.5e-9
    expected = (fixed / 2048 + c1 + c2 * (8192 + 1023.5)) / (fixed / 2048 + c1 + c2 * 1023.5)
    got = model_relative_cost(fit([1e-3, c1, c2, 0, 0, 1e-3]), 8192, 2048)
    assert got == pytest.approx(expected)
    # A larger extend spreads the fixed cost thinner: position weighs more.
    assert model_relative_cost(fit([1e-3, c1, c2, 0, 0, 1e-3]), 8192, 8192) > 1.0


def test_recorded_summary_follows_from_its_parts():
    merged = read_json(RECORDED)
    assert summary(merged["parts"]) == merged["summary"]


def test_a_later_no_pressure_file_replaces_only_its_settings(tmp_path):
    parts = read_json(RECORDED)["parts"]
    rerun = {
        **{k: v for k, v in parts["no_pressure"].items() if k != "cuda_graph_default"},
        "commit": "rerun1",
        # As `run` writes it: the entry's commit is the file's.
        "disable_cuda_graph": {
            **{
                k: v
                for k, v in parts["no_pressure"]["disable_cuda_graph"].items()
                if k not in ("commit", "date")
            },
            "tpot_ratio": 0.5,
        },
    }
    files = []
    for name, body in (("p", parts["pressure"]), ("n", parts["no_pressure"]), ("r", rerun)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(body))
    merged = json.loads(merge(files, tmp_path).read_text())
    no_pressure = merged["summary"]["no_pressure"]
    assert no_pressure["disable_cuda_graph"]["tpot_ratio"] == 0.5
    assert no_pressure["cuda_graph_default"] == {
        k: v for k, v in parts["no_pressure"]["cuda_graph_default"].items() if "ratio" in k
    }
    assert merged["commits"]["no_pressure.disable_cuda_graph"] == "rerun1"
    # An entry merged before keeps its own commit.
    assert (
        merged["commits"]["no_pressure.cuda_graph_default"]
        == parts["no_pressure"]["cuda_graph_default"]["commit"]
    )


def test_paired_and_round_runs_measure_both_servers_on_the_cpu(tiny_model, tmp_path):
    workload = LongMultiTurn(
        sessions=2, turns=2, doc_tokens=(60, 80), question_tokens=(5, 10), answer_tokens=4,
        think_s=(0.1, 0.2), arrival_gap_s=0.1, vocab=(10, 500),
    )  # fmt: skip
    # With the scheduler's timestamps, each ratio comes with its TTFT stages'.
    stock_args = [*cpu_server_args(), *POOL, "--enable-metrics", "--skip-tokenizer-init"]
    servers = {
        "stock": SGLangServer(
            tiny_model, extra_args=stock_args, env=stock_cpu_env(),
            log_path=tmp_path / "stock.log", timeout_s=420,
        ),
        "asymcache": SGLangServer(
            tiny_model, extra_args=[*stock_args, "--enable-asymcache"], env=cpu_env(),
            log_path=tmp_path / "asym.log", timeout_s=420,
        ),
    }  # fmt: skip
    try:
        for server in servers.values():
            server.start()
        runs, per_repeat = engage.run_paired(servers, workload, repeats=2)
        rounds, per_repeat_rounds = engage.run_rounds(servers, workload, 2, layout=None)
    finally:
        for server in servers.values():
            server.stop()
    for method, method_runs, ratios in (
        ("paired", runs, per_repeat),
        ("rounds", rounds, per_repeat_rounds),
    ):
        assert len(ratios) == 2 and all(r["tpot_ratio"] > 0 for r in ratios), method
        stage_ratios = [r["ttft_stage_ratios"] for r in ratios]
        assert all({"to_server", "queued", "prefill"} <= set(r) for r in stage_ratios), method
        assert all(v > 0 for r in stage_ratios for v in r.values()), method
        for name, run in method_runs.items():
            assert run["requests"] == 2 * 2 * 2, (method, name)
            assert run["cached_tokens"] > 0, (method, name)
        assert method_runs["asymcache"]["counters"]["timed_forwards"] > 0
    intervals = engage.round_ratio_intervals(per_repeat_rounds)
    for ratio in intervals.values():
        assert ratio["rounds"] == 2 * 2  # repeats x turns
        assert 0 < ratio["low"] <= ratio["geomean"] <= ratio["high"]
    # Round by round the two servers replay the same prompts: the same lengths and hits, up to
    # one token per follow-up: how much of a finished request SGLang commits to the tree
    # (`kv_committed_len`) can differ by its last decoded token from run to run.
    assert rounds["stock"]["prompt_tokens"] == rounds["asymcache"]["prompt_tokens"]
    follow_ups = 2 * (2 - 1) * 2  # sessions x later turns x repeats
    hits = rounds["stock"]["cached_tokens"], rounds["asymcache"]["cached_tokens"]
    assert abs(hits[0] - hits[1]) <= follow_ups
