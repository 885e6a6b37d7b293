"""AROUND ``sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend
.init_forward_metadata`` (SGLang 0.5.16).

Plans a multi-segment extend once per forward: a shallow copy of the ForwardBatch whose requests
are the sub-requests (segment [s, e) attends causally to KV [0, e) of its request). The paired
``forward_extend`` hook runs every layer on that copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff
from asymcache_sglang.msa import plan_sub_requests, sub_request_view

TARGET = (
    "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.init_forward_metadata"
)
HOOK_TYPE = HookType.AROUND


def hook(original: Callable[..., Any], backend: Any, forward_batch: Any) -> Any:
    result = original(backend, forward_batch)
    forward = handoff.forward_plan(backend)
    if forward is not None:
        segments = forward.take_segments(forward_batch.forward_mode.is_extend())
        forward.sub_batch = None
        if segments is not None:
            forward.sub_batch = sub_request_view(forward_batch, plan_sub_requests(segments))
    return result
