"""AROUND ``sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_extend`` (0.5.16).

Before SGLang's code: allocate KV slots for every admitted plan's holes and put them into the
request's composite prefix, so ``req_to_token[r, 0:M]`` gets retained and hole slots. After it:
splice hole tokens and slots in front of each request's tail, fix the lengths and
``cached_tokens``, and leave the batch's ``handoff.ExtendPlan`` for the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from sglang.srt.managers.schedule_batch import compute_extend_logprob_start_len
from sglang.srt.mem_cache.allocation import alloc_token_slots
from sglang.srt.plugins.hook_registry import HookType
from sglang.srt.utils.common import flatten_arrays_to_pinned_cpu, is_pin_memory_available

from asymcache_sglang import handoff
from asymcache_sglang.core.digest import digest_of
from asymcache_sglang.core.segments import check_segments
from asymcache_sglang.msa import segment_positions
from asymcache_sglang.radix_cache import HoleAwareRadixCache

TARGET = "sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_extend"
HOOK_TYPE = HookType.AROUND


def fill_holes(cache: HoleAwareRadixCache, planned: list[tuple[Any, Any]]) -> None:
    """Put one fresh slot per hole token into each composite prefix.

    The plans' paths are locked, so the eviction this allocation may trigger spares them.
    """
    total = sum(plan.recompute_tokens for _, plan in planned)
    slots = alloc_token_slots(cache, total)
    offset = 0
    for req, plan in planned:
        for s, e in plan.recompute:
            req.prefix_indices[s:e] = slots[offset : offset + e - s]
            offset += e - s
    cache.counters.plans += len(planned)
    cache.counters.planned_hole_tokens += total
    for _, plan in planned:
        for s, e in plan.recompute:
            cache.counters.plans_digest = digest_of(cache.counters.plans_digest, s, e)
    # A later chunk's plan starts with what the request's earlier chunks wrote: not reuse.
    cache.counters.retained_tokens += sum(
        plan.retained_tokens - req.already_computed for req, plan in planned
    )


def hook(original: Callable[..., Any], batch: Any, *args: Any, **kwargs: Any) -> Any:
    cache = handoff.enabled_cache(batch.tree_cache)
    if cache is None:
        return original(batch, *args, **kwargs)
    planned = []
    for req in batch.reqs:
        plan = handoff.request_plan(req).take_admitted()
        if plan is not None:
            planned.append((req, plan))
        if not req.retracted_stain:
            # What meta_info.cached_tokens must add for this round: retained tokens only.
            hit = plan.retained_tokens if plan is not None else len(req.prefix_indices)
            cache.counters.cached_tokens += hit - req.already_computed
    if not planned:
        return original(batch, *args, **kwargs)

    fill_holes(cache, planned)
    plans = {id(r): p for r, p in planned}
    result = original(batch, *args, **kwargs)
    old_extend_lens = list(batch.extend_lens)

    fill_tokens, slots, segments = [], [], []
    loc_offset = 0
    for i, req in enumerate(batch.reqs):
        tail_len = old_extend_lens[i]
        tail_slots = batch.out_cache_loc[loc_offset : loc_offset + tail_len]
        loc_offset += tail_len
        seq_len = req.extend_range.end
        plan = plans.get(id(req))
        fill_ids = req.full_untruncated_fill_ids
        if plan is None:
            prefix_len = batch.prefix_lens[i]
            fill_tokens.append(fill_ids[prefix_len:seq_len])
            slots.append(tail_slots)
            segments.append([(prefix_len, seq_len)])
            continue
        holes = plan.recompute_tokens
        for s, e in plan.recompute:
            fill_tokens.append(fill_ids[s:e])
        fill_tokens.append(fill_ids[plan.prefix_len : seq_len])
        slots.extend(req.prefix_indices[s:e] for s, e in plan.recompute)
        slots.append(tail_slots)
        segments.append([*plan.recompute, (plan.prefix_len, seq_len)])
        batch.prefix_lens[i] = plan.prefix_len - holes
        batch.extend_lens[i] = tail_len + holes
        batch.extend_num_tokens += holes
        batch.extend_logprob_start_lens[i] = compute_extend_logprob_start_len(
            logprob_start_len=req.logprob_start_len,
            prefix_len=plan.prefix_len - holes,
            extend_len=tail_len + holes,
            full_untruncated_fill_len=len(fill_ids),
        )
        if not req.retracted_stain:
            # SGLang credited all M prefix tokens as cached; holes were recomputed.
            req.cached_tokens -= holes
            req.cached_tokens_device = max(0, req.cached_tokens_device - holes)
        req.cache_protected_len = plan.retained_tokens
        request = handoff.request_plan(req)
        request.retained = plan.retained
        request.pending_holes = list(plan.recompute)
    check_segments(segments, [r.extend_range.end for r in batch.reqs])
    batch.prefill_input_ids_cpu = flatten_arrays_to_pinned_cpu(
        fill_tokens, is_pin_memory_available(batch.device)
    )
    batch.out_cache_loc = torch.cat(slots)
    handoff.set_extend_plan(batch, handoff.ExtendPlan(segments, segment_positions(segments)))
    return result
