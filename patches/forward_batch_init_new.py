"""AFTER ``sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new`` (SGLang 0.5.16).

A batch with hole plans gets each token's absolute position (RoPE) from its segment, and carries
the segments to the attention backend. SGLang's own positions assume one contiguous extend.
"""

from __future__ import annotations

from typing import Any

from sglang.srt.plugins.hook_registry import HookType

TARGET = "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new"
HOOK_TYPE = HookType.AFTER


def hook(forward_batch: Any, cls: Any, batch: Any, *args: Any, **kwargs: Any) -> None:
    segments = getattr(batch, "asymcache_segments", None)
    if segments is None or not forward_batch.forward_mode.is_extend():
        forward_batch.asymcache_segments = None
        return
    # The ScheduleBatch lives on as the running batch; its plan is for this forward only.
    batch.asymcache_segments = None
    positions = batch.asymcache_positions
    batch.asymcache_positions = None
    forward_batch.positions = positions.to(forward_batch.positions.device, non_blocking=True)
    forward_batch.asymcache_segments = segments
