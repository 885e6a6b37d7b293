"""AROUND ``sglang.srt.managers.scheduler.Scheduler._get_new_batch_prefill_raw`` (SGLang 0.5.16).

With ``--asymcache-chunking adaptive`` each scheduling pass sets the prefill chunk size from the
online latency model (within the TPOT budget when running decodes share the forward, else the
throughput knee), then restores the launch-time ``chunked_prefill_size``, the upper bound.
With TP > 1 it first counts the pass and, every few passes, publishes TP rank 0's latency fit and
clock on every rank (``TpAgreement.on_pass``), so eviction and chunks agree across ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang.srt.plugins.hook_registry import HookType
from sglang.srt.utils import broadcast_pyobj

from asymcache_sglang import handoff

TARGET = "sglang.srt.managers.scheduler.Scheduler._get_new_batch_prefill_raw"
HOOK_TYPE = HookType.AROUND


def next_prefix_len(scheduler: Any) -> int:
    """Context the next chunk's tokens attend: the chunked request's progress, else the head's."""
    if scheduler.chunked_req is not None:
        return len(scheduler.chunked_req.prefix_indices)
    if scheduler.waiting_queue:
        return len(scheduler.waiting_queue[0].prefix_indices)
    return 0


def broadcast_from_tp_rank0(scheduler: Any, obj: Any) -> Any:
    """``obj`` as TP rank 0 has it, on every rank (the CPU group SGLang broadcasts requests on)."""
    group = scheduler.tp_group
    return broadcast_pyobj([obj], group.rank, scheduler.tp_cpu_group, src=group.ranks[0])[0]


def decodes_beside_prefill(scheduler: Any, running_batch: Any) -> list[Any]:
    """Running requests whose decode shares the next prefill forward.

    SGLang mixes them in only with --enable-mixed-chunk and no logprob requests on either side;
    otherwise decodes wait for the whole prefill, and a smaller chunk would only add steps.
    """
    if not scheduler.is_mixed_chunk or running_batch.return_logprob:
        return []
    head = scheduler.chunked_req or scheduler.waiting_queue[0]
    return [] if head.return_logprob else list(running_batch.reqs)


def hook(
    original: Callable[..., Any],
    scheduler: Any,
    prefill_delayer_single_pass: Any,
    running_batch: Any,
) -> Any:
    cache = handoff.enabled_cache(scheduler.tree_cache)
    if cache is None:
        return original(scheduler, prefill_delayer_single_pass, running_batch)
    latency = cache.latency
    if cache.tp_agreement is not None:
        # Every rank calls this in the same order (SGLang keeps their scheduling identical).
        cache.tp_agreement.on_pass(lambda state: broadcast_from_tp_rank0(scheduler, state))
    launch_chunk = scheduler.chunked_prefill_size
    if (
        cache.config.chunking != "adaptive"
        or launch_chunk is None
        or (not scheduler.waiting_queue and scheduler.chunked_req is None)
    ):
        return original(scheduler, prefill_delayer_single_pass, running_batch)
    decision = latency.choose_chunk(
        prefix_len=next_prefix_len(scheduler),
        decode_seq_lens=[req.seqlen for req in decodes_beside_prefill(scheduler, running_batch)],
        max_chunk=launch_chunk,
        page_size=scheduler.page_size,
    )
    if decision is None:
        return original(scheduler, prefill_delayer_single_pass, running_batch)
    scheduler.chunked_prefill_size = decision.chunk
    try:
        return original(scheduler, prefill_delayer_single_pass, running_batch)
    finally:
        scheduler.chunked_prefill_size = launch_chunk
