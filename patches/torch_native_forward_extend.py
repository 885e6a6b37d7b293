"""AROUND ``sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend
.forward_extend`` (SGLang 0.5.16).

Runs attention over the sub-request view planned in ``init_forward_metadata``. SGLang's
``forward_extend`` writes the new KV before attention, which is what makes segments exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff

TARGET = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend"
HOOK_TYPE = HookType.AROUND


def hook(
    original: Callable[..., Any],
    backend: Any,
    q: Any,
    k: Any,
    v: Any,
    layer: Any,
    forward_batch: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    forward = handoff.forward_plan(backend)
    if forward is not None and forward.sub_batch is not None:
        forward_batch = forward.sub_batch
    return original(backend, q, k, v, layer, forward_batch, *args, **kwargs)
