"""AROUND ``sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend
.init_forward_metadata`` (SGLang 0.5.16).

A batch with hole plans is planned as sub-requests: segment [s, e) of request r is a causal
sub-request with qo_len e - s over KV ``req_to_token[r, 0:e]``. FlashInfer's causal mask is
bottom-right aligned, so its queries sit at positions [s, e). Only the paged path is used: the
ragged path writes the new KV after attention, and a segment must read the KV of the segments
before it in the same forward. With ``--asymcache-msa-impl triton`` the plan is for AsymCache's
own kernel instead, which the paired ``forward_extend`` hook runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from sglang.srt.plugins.hook_registry import HookType

from asymcache_sglang import handoff
from asymcache_sglang.msa import SubRequestPlan, plan_sub_requests

TARGET = (
    "sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend.init_forward_metadata"
)
HOOK_TYPE = HookType.AROUND


def plan_flashinfer(backend: Any, forward_batch: Any, plan: SubRequestPlan) -> None:
    """FlashInfer paged prefill, one sub-request per segment, through SGLang's own planner."""
    # Imported here: the plugin loads in every process, and only schedulers need FlashInfer.
    from sglang.srt.layers.attention.flashinfer_backend import (
        MultiItemScoringParams,
        PrefillMetadata,
    )

    updater = backend.indices_updater_prefill
    n_sub = len(plan.seq_lens)
    device = forward_batch.seq_lens.device
    if updater.kv_last_page_len.numel() < n_sub:
        # Page size 1: every last page is full, so a longer all-ones buffer means the same.
        updater.kv_last_page_len = torch.ones(n_sub, dtype=torch.int32, device=device)
    seq_lens = plan.seq_lens.to(device)
    updater.call_begin_forward(
        backend.prefill_wrapper_ragged,
        backend.prefill_wrappers_paged[0],
        forward_batch.req_pool_indices[plan.req_index.to(device)],
        seq_lens,
        int(plan.seq_lens.sum()),
        seq_lens,
        plan.prefix_lens.to(device),
        None,
        # Fresh indptr buffers: the backend's hold max_bs + 1 entries, fewer than sub-requests.
        torch.zeros(n_sub + 1, dtype=torch.int32, device=device),
        torch.zeros(n_sub + 1, dtype=torch.int32, device=device),
        use_ragged=False,
        spec_info=None,
        fixed_split_size=backend.prefill_split_tile_size,
        seq_lens_cpu=plan.seq_lens,
    )
    backend.forward_metadata = PrefillMetadata(
        backend.prefill_wrappers_paged, False, False, MultiItemScoringParams()
    )


def plan_triton(backend: Any, forward_batch: Any, plan: SubRequestPlan) -> Any:
    """AsymCache's MSA kernel: segments of one request share that request's KV index range."""
    from asymcache_sglang.kernels.msa_triton import TritonMSAWrapper

    device = forward_batch.seq_lens.device
    updater = backend.indices_updater_prefill
    req_lens = forward_batch.seq_lens_cpu.to(torch.int64)
    req_offsets = torch.nn.functional.pad(torch.cumsum(req_lens, 0), (1, 0))
    kv_indices = torch.empty(int(req_offsets[-1]), dtype=torch.int32, device=device)
    fill_kv_indices(updater.req_to_token, forward_batch.req_pool_indices, req_lens, kv_indices)
    wrapper = TritonMSAWrapper(updater.num_qo_heads, updater.num_kv_heads, updater.head_dim)
    wrapper.plan(plan.qo_indptr(), req_offsets[plan.req_index], plan.seq_lens, kv_indices)
    return wrapper


def fill_kv_indices(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    req_lens: torch.Tensor,
    kv_indices: torch.Tensor,
) -> None:
    """``kv_indices`` = the rows ``req_to_token[r, 0:len_r]`` back to back (SGLang's kernel)."""
    from sglang.kernels.ops.attention.utils import create_flashinfer_kv_indices_triton

    kv_indptr = torch.nn.functional.pad(torch.cumsum(req_lens, 0), (1, 0)).to(
        kv_indices.device, torch.int32
    )
    create_flashinfer_kv_indices_triton[(len(req_lens),)](
        req_to_token,
        req_pool_indices,
        req_lens.to(kv_indices.device),
        kv_indptr,
        None,
        kv_indices,
        req_to_token.shape[1],
    )


def hook(original: Callable[..., Any], backend: Any, forward_batch: Any) -> Any:
    forward = handoff.forward_plan(backend)
    if forward is None:
        return original(backend, forward_batch)
    forward.msa_kernel = None
    segments = forward.take_segments(forward_batch.forward_mode.is_extend())
    if segments is None:
        return original(backend, forward_batch)
    plan = plan_sub_requests(segments)
    if forward.msa_impl == "triton":
        forward.msa_kernel = plan_triton(backend, forward_batch, plan)
    else:
        plan_flashinfer(backend, forward_batch, plan)
    return None
