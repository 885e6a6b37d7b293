"""An SGLang frontend program (sgl.function, multi-turn gen) against the AsymCache CPU server."""

from __future__ import annotations

import pytest
import sglang as sgl

pytestmark = pytest.mark.e2e


@sgl.function
def tool_agent(s, task: str, tool_results: list[str]):
    s += sgl.system("You are an agent. Use the tools, then answer briefly.")
    s += sgl.user(task)
    for i, result in enumerate(tool_results):
        s += sgl.assistant(sgl.gen(f"step_{i}", max_tokens=12, temperature=0))
        s += sgl.user(f"Tool result: {result}")
    s += sgl.assistant(sgl.gen("answer", max_tokens=12, temperature=0))


def _run(url: str) -> list[dict]:
    backend = sgl.RuntimeEndpoint(url)
    tasks = [
        ("Find the cheapest flight to Lisbon in May.", ["3 flights found", "cheapest is 120 EUR"]),
        ("Summarise the open issues of the project.", ["12 issues", "4 are bugs", "2 are urgent"]),
    ]
    states = tool_agent.run_batch(
        [{"task": t, "tool_results": r} for t, r in tasks], backend=backend, num_threads=1
    )
    return [{"text": st.text(), "answer_meta": st.get_meta_info("answer")} for st in states]


def test_frontend_program_matches_no_cache(asymcache_server, no_cache_server):
    ours = _run(asymcache_server.url)
    again = _run(asymcache_server.url)  # second run reuses the cached conversation prefixes
    ref = _run(no_cache_server.url)
    assert [o["text"] for o in ours] == [r["text"] for r in ref]
    assert [o["text"] for o in again] == [r["text"] for r in ref]
    assert all(a["answer_meta"]["cached_tokens"] > 0 for a in again)
