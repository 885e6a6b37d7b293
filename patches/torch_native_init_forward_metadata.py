"""AROUND ``sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend
.init_forward_metadata`` (SGLang 0.5.16).

Plans a multi-segment extend once per forward: a shallow copy of the ForwardBatch whose requests
are the sub-requests (segment [s, e) attends causally to KV [0, e) of its request). The paired
``forward_extend`` hook runs every layer on that copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang.msa import plan_sub_requests

TARGET = (
    "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.init_forward_metadata"
)
HOOK_TYPE = HookType.AROUND


def sub_request_batch(forward_batch: Any, segments: list) -> Any:
    """The ForwardBatch seen by the attention kernel: one row per segment."""
    plan = plan_sub_requests(segments)
    if int(plan.extend_lens.sum()) != forward_batch.extend_num_tokens:
        raise RuntimeError("AsymCache segment plan does not match the extend batch it was made for")
    device = forward_batch.seq_lens.device
    sub = copy.copy(forward_batch)
    sub.req_pool_indices = forward_batch.req_pool_indices[plan.req_index.to(device)]
    sub.seq_lens = plan.seq_lens.to(device)
    sub.extend_prefix_lens = plan.prefix_lens.to(device)
    sub.extend_seq_lens = plan.extend_lens.to(device)
    return sub


def hook(original: Callable[..., Any], backend: Any, forward_batch: Any) -> Any:
    result = original(backend, forward_batch)
    # Only AsymCache's ForwardBatch.init_new hook sets this attribute.
    if hasattr(backend, "asymcache_pending_segments"):
        segments = backend.asymcache_pending_segments
        backend.asymcache_pending_segments = None
        has_plan = segments is not None and forward_batch.forward_mode.is_extend()
        backend.asymcache_sub_batch = (
            sub_request_batch(forward_batch, segments) if has_plan else None
        )
    return result
