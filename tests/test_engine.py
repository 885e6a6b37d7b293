"""``sglang.Engine(..., enable_asymcache=True)`` in-process on the CPU."""

from __future__ import annotations

import os
import sys

import pytest

from eval.server import VLLM_STUB_DIR

pytestmark = pytest.mark.e2e


def test_engine_kwarg_enables_asymcache(tiny_model, monkeypatch):
    # The spawned scheduler imports the `vllm` stub on SGLang's CPU rotary path.
    monkeypatch.syspath_prepend(str(VLLM_STUB_DIR))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(VLLM_STUB_DIR), *sys.path]))
    monkeypatch.delenv("SGLANG_USE_CPU_ENGINE", raising=False)
    import sglang as sgl

    engine = sgl.Engine(
        model_path=str(tiny_model),
        device="cpu",
        dtype="float32",
        grammar_backend="none",
        disable_decode_cuda_graph=True,
        sleep_on_idle=True,
        max_total_tokens=1200,
        enable_asymcache=True,
    )
    try:
        prompt = list(range(20, 120))
        params = {"max_new_tokens": 4, "temperature": 0.0, "ignore_eos": True}
        first = engine.generate(input_ids=prompt, sampling_params=params)
        second = engine.generate(input_ids=prompt, sampling_params=params)
        counters = engine.get_server_info()["internal_states"][0]["asymcache"]
    finally:
        engine.shutdown()
    assert first["output_ids"] == second["output_ids"]
    assert second["meta_info"]["cached_tokens"] == len(prompt) - 1
    assert counters["cached_tokens"] >= len(prompt) - 1
