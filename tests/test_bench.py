"""``python -m eval.bench`` against a real CPU server: settings, overrides and the result."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import SHARED_PREFIX_SETTINGS

from eval.agent_workload import AgentPrograms
from eval.bench import SharedPrefixGroups, parse_overrides, run_bench
from eval.common import flush_cache
from eval.mooncake_trace import TraceCut
from eval.server import REPO_ROOT
from eval.workloads import LongMultiTurn


def test_overrides_are_typed_by_the_settings_defaults():
    got = parse_overrides(LongMultiTurn, ["sessions=3", "doc_tokens=100,200", "think_s=0.5,1"])
    assert got == {"sessions": 3, "doc_tokens": (100, 200), "think_s": (0.5, 1.0)}
    assert parse_overrides(TraceCut, ["max_requests=7"]) == {"max_requests": 7}
    with pytest.raises(ValueError, match="name one of"):
        parse_overrides(LongMultiTurn, ["nonsense=1"])
    with pytest.raises(ValueError, match="expected 2 comma-separated"):
        parse_overrides(LongMultiTurn, ["doc_tokens=100"])
    assert parse_overrides(AgentPrograms, ["close_programs=False"]) == {"close_programs": False}
    with pytest.raises(ValueError, match="true or false"):
        parse_overrides(AgentPrograms, ["close_programs=0"])


def test_shared_prefix_groups_share_within_a_group_only():
    prompts = SharedPrefixGroups(groups=2, prompts_per_group=3, system_prompt_tokens=50).prompts()
    assert len(prompts) == 6 and all(len(p) == 50 + 128 for p in prompts)
    assert prompts[0][:50] == prompts[2][:50] != prompts[3][:50]
    assert prompts[0][50:] != prompts[1][50:]


def test_bench_runs_against_a_cpu_server(asymcache_server):
    flush_cache(asymcache_server.url)
    result = run_bench(asymcache_server.url, "generated-shared-prefix", SHARED_PREFIX_SETTINGS)
    assert result["workload"]["name"] == "generated-shared-prefix"
    assert result["workload"]["groups"] == 2 and result["server"]["enable_asymcache"] is True
    metrics = result["metrics"]
    assert metrics["requests"] == 6 and metrics["ttft_p99_s"] >= metrics["ttft_p50_s"] > 0
    # Each group's later prompts find its system prompt cached.
    assert metrics["cached_tokens"] >= 2 * 200
    assert "plans" in result["asymcache"] and result["card"] and result["commit"]


def test_bench_cli_refuses_an_unknown_setting(asymcache_server, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "eval.bench", "--url", asymcache_server.url, "--workload",
         "agents", "--set", "no_such_field=1", "--out", str(tmp_path / "r.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "no_such_field" in out.stderr
    assert not (tmp_path / "r.json").exists()


def test_bench_cli_writes_the_agents_result(asymcache_server, tmp_path):
    flush_cache(asymcache_server.url)
    path = tmp_path / "agents.json"
    settings = ["sessions=2", "arrival_rate_per_s=20", "system_prompt_tokens=64",
                "task_tokens=10,20", "steps=2,2", "action_tokens=3", "tool_result_tokens=10,20",
                "tool_delay_median_s=0.05", "vocab=10,500"]  # fmt: skip
    cmd = [sys.executable, "-m", "eval.bench", "--url", asymcache_server.url, "--workload",
           "agents", "--out", str(path)]  # fmt: skip
    for pair in settings:
        cmd += ["--set", pair]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    result = json.loads(path.read_text())
    assert result["metrics"]["jobs"] == 2 and result["metrics"]["requests"] == 4
    assert result["metrics"]["jct_mean_s"] >= 0.05


@pytest.mark.e2e
def test_a_run_through_sglang_router_reports_each_replicas_share(routed_replicas):
    result = run_bench(routed_replicas.url, "generated-shared-prefix", SHARED_PREFIX_SETTINGS)
    replicas = result["replicas"]
    assert result["server"] == {"router": routed_replicas.url, "replicas": 2}
    assert {r["url"] for r in replicas} == set(routed_replicas.workers)
    metrics = result["metrics"]
    assert metrics["requests"] == 6
    # Every prompt token went to one replica or the other, cached ones included.
    assert sum(r["prompt_tokens"] for r in replicas) == metrics["prompt_tokens"]
    assert sum(r["cached_tokens"] for r in replicas) == metrics["cached_tokens"] > 0
    for replica in replicas:
        assert replica["server"]["enable_asymcache"] is True
        assert "plans" in replica["asymcache"]
