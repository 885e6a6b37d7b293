"""Multi-segment extend plan: one request's recompute segments become causal sub-requests.

Segment [s, e) of request r attends to KV positions [0, e) of r, which the forward has already
written (retained slots, hole slots of this forward, earlier segments), so a kernel that supports
"queries of a sub-request attend causally to the end of its KV" computes it exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from asymcache_sglang.core.segments import Segment


@dataclass(frozen=True)
class SubRequestPlan:
    """Flattened sub-requests, in the order their query tokens appear in the extend batch."""

    req_index: torch.Tensor  # int64 [n_sub]: which batch request each sub-request belongs to
    prefix_lens: torch.Tensor  # int64 [n_sub]: segment start s
    seq_lens: torch.Tensor  # int64 [n_sub]: segment end e (the sub-request's KV length)
    extend_lens: torch.Tensor  # int64 [n_sub]: e - s

    def qo_indptr(self) -> torch.Tensor:
        """int64 [n_sub + 1]: where each sub-request's query rows start in the extend batch."""
        return torch.nn.functional.pad(torch.cumsum(self.extend_lens, 0), (1, 0))


def segment_positions(segments: Sequence[Sequence[Segment]]) -> torch.Tensor:
    """Absolute positions (for RoPE) of every extend token, request by request."""
    parts = [torch.arange(s, e, dtype=torch.int64) for segs in segments for s, e in segs]
    if not parts:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat(parts)


def plan_sub_requests(segments: Sequence[Sequence[Segment]]) -> SubRequestPlan:
    """Expand per-request segments into sub-requests (CPU tensors)."""
    req_index = [i for i, segs in enumerate(segments) for _ in segs]
    starts = [s for segs in segments for s, _ in segs]
    ends = [e for segs in segments for _, e in segs]
    return SubRequestPlan(
        req_index=_int64(req_index),
        prefix_lens=_int64(starts),
        seq_lens=_int64(ends),
        extend_lens=_int64([e - s for s, e in zip(starts, ends)]),
    )


def _int64(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def sub_request_view(forward_batch: Any, plan: SubRequestPlan) -> Any:
    """A shallow copy of an SGLang ForwardBatch whose requests are ``plan``'s sub-requests.

    Backends that plan from ``req_pool_indices``/``seq_lens``/``extend_prefix_lens`` then plan
    segment [s, e) as a request with prefix s and length e. Query rows are already in this order.
    """
    if int(plan.extend_lens.sum()) != forward_batch.extend_num_tokens:
        raise RuntimeError("AsymCache segment plan does not match the extend batch it was made for")
    device = forward_batch.seq_lens.device
    sub = copy.copy(forward_batch)
    sub.batch_size = len(plan.seq_lens)
    sub.req_pool_indices = forward_batch.req_pool_indices[plan.req_index.to(device)]
    sub.seq_lens = plan.seq_lens.to(device)
    sub.seq_lens_cpu = plan.seq_lens
    sub.seq_lens_sum = int(plan.seq_lens.sum())
    sub.extend_prefix_lens = plan.prefix_lens.to(device)
    sub.extend_prefix_lens_cpu = plan.prefix_lens.tolist()
    sub.extend_seq_lens = plan.extend_lens.to(device)
    sub.extend_seq_lens_cpu = plan.extend_lens.tolist()
    return sub
