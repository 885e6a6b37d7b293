"""An SGLang frontend program (sgl.function, multi-turn gen) against the AsymCache CPU server."""

from __future__ import annotations

import time

import pytest
import sglang as sgl

from asymcache_sglang.frontend import ProgramEndpoint
from eval.common import asymcache_counters, server_health

pytestmark = pytest.mark.e2e


@sgl.function
def tool_agent(s, task: str, tool_results: list[str]):
    s += sgl.system("You are an agent. Use the tools, then answer briefly.")
    s += sgl.user(task)
    for i, result in enumerate(tool_results):
        s += sgl.assistant(sgl.gen(f"step_{i}", max_tokens=12, temperature=0))
        s += sgl.user(f"Tool result: {result}")
    s += sgl.assistant(sgl.gen("answer", max_tokens=12, temperature=0))


TASKS = [
    ("Find the cheapest flight to Lisbon in May.", ["3 flights found", "cheapest is 120 EUR"]),
    ("Summarise the open issues of the project.", ["12 issues", "4 are bugs", "2 are urgent"]),
]


def _run(
    url: str, endpoint: type[sgl.RuntimeEndpoint] = sgl.RuntimeEndpoint, tasks: list = TASKS
) -> list[dict]:
    states = tool_agent.run_batch(
        [{"task": t, "tool_results": r} for t, r in tasks], backend=endpoint(url), num_threads=1
    )
    return [{"text": st.text(), "answer_meta": st.get_meta_info("answer")} for st in states]


def test_frontend_program_matches_no_cache(asymcache_server, no_cache_server):
    ours = _run(asymcache_server.url)
    again = _run(asymcache_server.url)  # second run reuses the cached conversation prefixes
    ref = _run(no_cache_server.url)
    assert [o["text"] for o in ours] == [r["text"] for r in ref]
    assert [o["text"] for o in again] == [r["text"] for r in ref]
    assert all(a["answer_meta"]["cached_tokens"] > 0 for a in again)


def test_program_endpoint_names_each_run_and_closes_it(asymcache_server, no_cache_server):
    """Each run's gen calls are one program (a return per call after the first) and its end
    releases the KV only that run held; outputs stay those of the no-cache server."""
    # Tasks of their own: KV another program also holds (an earlier run's) is not released.
    tasks = [(f"{task} Answer in French.", results) for task, results in TASKS]
    before = asymcache_counters(asymcache_server.url)
    ours = _run(asymcache_server.url, ProgramEndpoint, tasks)
    deadline = time.monotonic() + 30  # the close follows the run's last call, off its thread
    # SGLang's run_batch first caches the batch's common prefix, a one-request program of its own.
    waiting = before["programs_waiting"] + 1
    while (after := asymcache_counters(asymcache_server.url))[
        "programs_waiting"
    ] > waiting and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [o["text"] for o in ours] == [r["text"] for r in _run(no_cache_server.url, tasks=tasks)]
    calls = sum(len(results) + 1 for _, results in tasks)
    assert after["return_gaps"] - before["return_gaps"] == calls - len(TASKS)
    assert after["programs_in"] == 0
    assert after["programs_waiting"] == waiting  # the runs are closed, not waiting
    assert after["released_tokens"] > before["released_tokens"]
    assert server_health(asymcache_server)["leak_or_error_lines"] == 0
