"""AROUND ``sglang.srt.model_executor.runner.prefill_cuda_graph_runner.PrefillCudaGraphRunner
.can_run_graph`` (SGLang 0.5.16).

Prefill CUDA graphs were captured for contiguous extends; a forward that carries hole segments
runs eagerly, through the attention hooks that plan its sub-requests. Every other extend replays
SGLang's graph as it would without AsymCache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff

TARGET = (
    "sglang.srt.model_executor.runner.prefill_cuda_graph_runner.PrefillCudaGraphRunner"
    ".can_run_graph"
)
HOOK_TYPE = HookType.AROUND


def hook(original: Callable[..., Any], runner: Any, forward_batch: Any) -> bool:
    forward = handoff.forward_plan(runner.model_runner.attn_backend)
    if forward is not None and forward.segments is not None:
        return False
    return original(runner, forward_batch)
