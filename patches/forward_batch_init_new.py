"""AFTER ``sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new`` (SGLang 0.5.16).

A batch with hole plans gets each token's absolute position (RoPE) from its segment, and hands
its segments to the attention backend. SGLang's own positions assume one contiguous extend.
With ``--enable-mixed-chunk`` the running requests' decode tokens follow the planned extends, one
segment each. The number of those decodes goes to the backend too, for the forward's timing.
The eager runner copies the ForwardBatch into static buffers without extra attributes, so the
segments travel on the backend, which plans the very next ``init_forward_metadata`` with them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang.msa import segment_positions
from asymcache_sglang.radix_cache import HoleAwareRadixCache

TARGET = "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new"
HOOK_TYPE = HookType.AFTER

logger = logging.getLogger(__name__)


def msa_impl_for(configured: str | None, model_runner: Any) -> str | None:
    """The configured MSA kernel, or FlashInfer's for models AsymCache's kernel cannot run."""
    hf_config = model_runner.model_config.hf_config
    if configured == "triton" and (
        getattr(hf_config, "attn_logit_softcapping", None)
        or getattr(hf_config, "sliding_window", None)
    ):
        logger.warning(
            "--asymcache-msa-impl triton has no logit cap or sliding window; this model has "
            "one, so multi-segment extends use FlashInfer's sub-request plan"
        )
        return "flashinfer"
    return configured


def hook(forward_batch: Any, cls: Any, batch: Any, model_runner: Any, *a: Any, **kw: Any) -> None:
    if not isinstance(getattr(batch, "tree_cache", None), HoleAwareRadixCache):
        return
    backend = model_runner.attn_backend
    if getattr(model_runner, "asymcache_timer", None) is None:
        # The ModelRunner.forward hook times forwards with it for the cache's latency model.
        model_runner.asymcache_timer = batch.tree_cache.forward_timer(model_runner.device)
        backend.asymcache_msa_impl = msa_impl_for(batch.tree_cache.config.msa_impl, model_runner)
    mixed = forward_batch.forward_mode.is_mixed()
    backend.asymcache_mixed_decodes = len(batch.decoding_reqs or ()) if mixed else 0
    segments = getattr(batch, "asymcache_segments", None)
    if segments is None or not forward_batch.forward_mode.is_extend():
        backend.asymcache_pending_segments = None
        return
    # The ScheduleBatch lives on as the running batch; its plan is for this forward only.
    batch.asymcache_segments = None
    positions = batch.asymcache_positions
    batch.asymcache_positions = None
    if mixed:
        # mix_with_running appended each running request as a 1-token extend after the plans.
        lens = zip(
            forward_batch.extend_prefix_lens_cpu[len(segments) :],
            forward_batch.extend_seq_lens_cpu[len(segments) :],
        )
        decodes = [[(prefix, prefix + new)] for prefix, new in lens]
        segments = [*segments, *decodes]
        positions = torch.cat([positions, segment_positions(decodes)])
        batch.tree_cache.counters["mixed_plan_batches"] += 1
    forward_batch.positions = positions.to(forward_batch.positions.device, non_blocking=True)
    backend.asymcache_pending_segments = segments
