"""AROUND ``sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend
.forward_extend`` (SGLang 0.5.16).

With ``--asymcache-msa-impl triton`` a multi-segment extend runs AsymCache's Triton MSA kernel,
planned in ``init_forward_metadata``. The new KV is written first, as SGLang's paged path does,
so each segment reads the segments before it. Every other extend is SGLang's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff

TARGET = "sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend.forward_extend"
HOOK_TYPE = HookType.AROUND


def hook(
    original: Callable[..., Any],
    backend: Any,
    q: Any,
    k: Any,
    v: Any,
    layer: Any,
    forward_batch: Any,
    save_kv_cache: bool = True,
) -> Any:
    forward = handoff.forward_plan(backend)
    kernel = None if forward is None else forward.msa_kernel
    if kernel is None:
        return original(backend, q, k, v, layer, forward_batch, save_kv_cache)
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    if layer.logit_cap or (layer.sliding_window_size or -1) >= 0 or layer.is_cross_attention:
        raise RuntimeError(
            "--asymcache-msa-impl triton supports plain causal attention only (no logit cap, "
            "sliding window or cross-attention); use --asymcache-msa-impl flashinfer"
        )
    pool = backend.token_to_kv_pool
    if save_kv_cache:
        pool.set_kv_buffer(
            layer,
            KVWriteLoc(forward_batch.out_cache_loc, None),
            k,
            v,
            *backend._kv_write_scales(layer),
        )
    k_cache, v_cache = pool.get_kv_buffer(layer.layer_id)
    out = kernel.run(
        q.view(-1, layer.tp_q_head_num, layer.head_dim), k_cache, v_cache, layer.scaling
    )
    return out.view(-1, layer.tp_q_head_num * layer.head_dim)
