"""AROUND ``sglang.srt.layers.attention.triton_backend.TritonAttnBackend.init_forward_metadata``
(SGLang 0.5.16).

A batch with hole plans is planned on a sub-request view of the ForwardBatch: segment [s, e) is a
request with prefix [0, s) and extend [s, e). SGLang's extend kernel then reads the prefix from
the pool (earlier segments included: ``forward_extend`` writes the new KV before the kernel) and
the segment causally from the new tokens, which is exactly the multi-segment extend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff
from asymcache_sglang.msa import plan_sub_requests, sub_request_view

TARGET = "sglang.srt.layers.attention.triton_backend.TritonAttnBackend.init_forward_metadata"
HOOK_TYPE = HookType.AROUND


def hook(original: Callable[..., Any], backend: Any, forward_batch: Any) -> Any:
    forward = handoff.forward_plan(backend)
    if forward is None:
        return original(backend, forward_batch)
    segments = forward.take_segments(forward_batch.forward_mode.is_extend())
    if segments is None:
        return original(backend, forward_batch)
    sub = sub_request_view(forward_batch, plan_sub_requests(segments))
    # The backend's indptr buffers hold max_bs + 1 entries, fewer than the sub-requests may need.
    saved = backend.kv_indptr, backend.qo_indptr
    backend.kv_indptr = saved[0].new_zeros(sub.batch_size + 1)
    backend.qo_indptr = saved[1].new_zeros(sub.batch_size + 1)
    try:
        return original(backend, sub)
    finally:
        backend.kv_indptr, backend.qo_indptr = saved
