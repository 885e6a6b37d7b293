"""``sglang.Engine(..., enable_asymcache=True)`` on the CPU, in a fresh Python process.

A fresh process because ``Engine.shutdown`` kills every child of its process, which would take
the session's servers down with it, and because the plugin must load inside ``Engine`` itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eval.server import REPO_ROOT, cpu_env

pytestmark = pytest.mark.e2e

ENGINE_SCRIPT = """
import json, sys
import sglang as sgl

engine = sgl.Engine(
    model_path=sys.argv[1], device="cpu", dtype="float32", grammar_backend="none",
    disable_decode_cuda_graph=True, sleep_on_idle=True, max_total_tokens=1200,
    enable_asymcache=True,
)
try:
    prompt = list(range(20, 120))
    params = {"max_new_tokens": 4, "temperature": 0.0, "ignore_eos": True}
    first = engine.generate(input_ids=prompt, sampling_params=params)
    second = engine.generate(input_ids=prompt, sampling_params=params)
    refused = []
    for bad in ([20, 10**6], [-1, 20]):
        try:
            engine.generate(input_ids=bad, sampling_params=params)
        except ValueError as exc:
            refused.append(str(exc))
    after = engine.generate(input_ids=prompt, sampling_params=params)
    counters = engine.get_server_info()["internal_states"][0]["asymcache"]
finally:
    engine.shutdown()
result = {"first": first, "second": second, "refused": refused, "after": after}
print("RESULT " + json.dumps({**result, "counters": counters}))
"""


def test_engine_kwarg_enables_asymcache(tiny_model):
    proc = subprocess.run(
        [sys.executable, "-c", ENGINE_SCRIPT, str(tiny_model)],
        cwd=REPO_ROOT,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    prompt_len = 100
    assert result["first"]["output_ids"] == result["second"]["output_ids"]
    assert result["second"]["meta_info"]["cached_tokens"] == prompt_len - 1
    assert result["counters"]["cached_tokens"] >= prompt_len - 1
    # Token ids outside the vocabulary are refused before the scheduler, which keeps serving.
    assert len(result["refused"]) == 2, result["refused"]
    assert all("valid token ids are 0 to" in message for message in result["refused"])
    assert result["after"]["output_ids"] == result["first"]["output_ids"]
