"""Agent programs: the seeded plan, and a run against a real CPU server."""

from __future__ import annotations

import statistics

import pytest
import requests

from eval.agent_workload import AgentPrograms, plan_sessions, run_agent_programs, summarize_jobs
from eval.common import asymcache_counters


def test_plan_is_seeded_and_shares_the_system_prompt():
    workload = AgentPrograms(sessions=200, arrival_rate_per_s=2.0, vocab=(10, 500))
    sessions = plan_sessions(workload)
    assert sessions == plan_sessions(workload)
    assert sessions != plan_sessions(AgentPrograms(sessions=200, arrival_rate_per_s=2.0, seed=1))
    system = sessions[0].prompt_ids[: workload.system_prompt_tokens]
    assert all(s.prompt_ids[: workload.system_prompt_tokens] == system for s in sessions)
    assert len({tuple(s.prompt_ids) for s in sessions}) == len(sessions)  # tasks differ
    gaps = [b.arrival_s - a.arrival_s for a, b in zip(sessions, sessions[1:])]
    assert sessions[0].arrival_s == 0.0 and min(gaps) >= 0.0
    assert statistics.mean(gaps) == pytest.approx(0.5, rel=0.2)  # Poisson at 2 per second
    for session in sessions:
        assert 3 <= len(session.steps) <= 8
        *tools, last = session.steps
        assert last.tool_delay_s is None and last.tool_result_ids == []
        assert all(t.tool_delay_s > 0 and 200 <= len(t.tool_result_ids) <= 3000 for t in tools)
    delays = [t.tool_delay_s for s in sessions for t in s.steps[:-1]]
    assert statistics.median(delays) == pytest.approx(2.0, rel=0.2)  # the lognormal's median


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="arrival rate"):
        AgentPrograms(arrival_rate_per_s=0)
    with pytest.raises(ValueError, match="tool delay"):
        AgentPrograms(tool_delay_median_s=0)


def test_agent_programs_run_against_a_cpu_server(asymcache_server):
    workload = AgentPrograms(
        sessions=3, arrival_rate_per_s=20.0, system_prompt_tokens=128, task_tokens=(20, 40),
        steps=(2, 3), action_tokens=4, tool_result_tokens=(20, 40), tool_delay_median_s=0.05,
        tool_delay_sigma=0.2, vocab=(10, 500),
    )  # fmt: skip
    # An empty tree: the session's own prefix then stays resident (the server is shared).
    requests.post(f"{asymcache_server.url}/flush_cache?timeout=30", timeout=60).raise_for_status()
    released = asymcache_counters(asymcache_server.url)["released_tokens"]
    jobs = run_agent_programs(asymcache_server.url, workload)
    released = asymcache_counters(asymcache_server.url)["released_tokens"] - released
    plans = plan_sessions(workload)
    # Each program's close reached the cache: at least its own task left its hold.
    own = sum(len(p.prompt_ids) - workload.system_prompt_tokens for p in plans)
    assert released >= own, (released, own)
    assert [len(job.calls) for job in jobs] == [len(s.steps) for s in plans]
    for job, plan in zip(jobs, plans):
        first, *later = job.calls
        assert first.input_ids == plan.prompt_ids
        for prev, call, step in zip(job.calls, later, plan.steps):
            # Each call resends the history: the last prompt, its answer and the tool's result.
            assert call.input_ids == prev.input_ids + prev.output_ids + step.tool_result_ids
            assert call.cached_tokens >= len(plan.prompt_ids)  # the session's own prefix
        assert job.completion_s >= sum(s.tool_delay_s or 0.0 for s in plan.steps)
    summary = summarize_jobs(jobs)
    assert summary["jobs"] == 3 and summary["jct_p99_s"] >= summary["jct_p50_s"] > 0
