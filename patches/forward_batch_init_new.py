"""AFTER ``sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new`` (SGLang 0.5.16).

A batch with hole plans gets each token's absolute position (RoPE) from its segment, and hands
its segments to the attention backend. SGLang's own positions assume one contiguous extend.
With ``--enable-mixed-chunk`` the running requests' decode tokens follow the planned extends, one
segment each; how many there are goes to the backend too, for the forward's timing. The eager
runner copies the ForwardBatch into static buffers without extra attributes, so the segments
travel on the backend's ``handoff.ForwardPlan``, which the very next ``init_forward_metadata``
plans from.
"""

from __future__ import annotations

from typing import Any

import torch
from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff
from asymcache_sglang.msa import segment_positions

TARGET = "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new"
HOOK_TYPE = HookType.AFTER


def hook(forward_batch: Any, cls: Any, batch: Any, model_runner: Any, *a: Any, **kw: Any) -> None:
    cache = handoff.enabled_cache(getattr(batch, "tree_cache", None))
    forward = handoff.forward_plan(model_runner.attn_backend)
    if cache is None or forward is None:
        return
    mixed = forward_batch.forward_mode.is_mixed()
    forward.mixed_decodes = len(batch.decoding_reqs or ()) if mixed else 0
    extend = handoff.take_extend_plan(batch)
    if extend is None or not forward_batch.forward_mode.is_extend():
        forward.segments = None
        return
    segments, positions = extend.segments, extend.positions
    if mixed:
        # mix_with_running appended each running request as a 1-token extend after the plans.
        lens = zip(
            forward_batch.extend_prefix_lens_cpu[len(segments) :],
            forward_batch.extend_seq_lens_cpu[len(segments) :],
        )
        decodes = [[(prefix, prefix + new)] for prefix, new in lens]
        segments = [*segments, *decodes]
        positions = torch.cat([positions, segment_positions(decodes)])
        cache.counters.mixed_plan_batches += 1
    forward_batch.positions = positions.to(forward_batch.positions.device, non_blocking=True)
    forward.segments = segments
