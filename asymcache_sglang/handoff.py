"""The state AsymCache hands between its hooks: the only module that names it on SGLang objects.

Each SGLang object that carries AsymCache state holds one typed object under one attribute; the
patches reach it through the functions below and never by attribute name. Every hook starts with
one guard, ``enabled_cache(tree_cache)`` on the scheduler side and ``forward_plan(backend)`` or
``forward_timer(model_runner)`` on the model side: each is None exactly when AsymCache is off.

A hole plan travels through SGLang 0.5.16 in these steps (owner in brackets):

0. Start-up [``plugin.make_asymcache_tree``]: builds the cache and its ``LatencyRuntime``, puts the
   runtime's ``ForwardTimer`` on the ModelRunner and a ``ForwardPlan`` on its attention backend.
1. ``RadixCache.match_prefix`` [``radix_cache``]: a matched path with holes becomes
   ``RequestPlan.matched`` on the Req.
2. ``PrefillAdder.add_one_req`` [``patches.prefill_adder_add_one_req``]: takes ``matched``,
   budgets holes plus tail (the holes that fit the chunk, ``plan_admission``), and sets
   ``RequestPlan.admitted`` if SGLang admits the request.
   2b. A chunked request's later chunks: ``PrefillAdder.add_chunked_req``
   [``patches.prefill_adder_add_chunked_req``] re-matches the rest of its prompt and admits the
   plan for it the same way.
3. ``ScheduleBatch.prepare_for_extend`` [``patches.schedule_batch_prepare_for_extend``]: takes
   ``admitted``, allocates and splices the holes, sets ``RequestPlan.retained`` (the slots the tree
   owns) and the batch's ``ExtendPlan`` (segments and their positions).
4. ``ForwardBatch.init_new`` [``patches.forward_batch_init_new``]: takes the ``ExtendPlan``, sets
   the positions, and puts this forward's segments and mixed-in decodes on the ``ForwardPlan``.
5. ``ModelRunner.forward`` [``patches.model_runner_forward``]: reads the ``ForwardPlan`` for the
   step's features and times the forward, which runs steps 6 and 7, with the ``ForwardTimer``.
   ``PrefillCudaGraphRunner.can_run_graph`` [``patches.prefill_cuda_graph_runner_can_run_graph``]
   sends a forward whose ``ForwardPlan`` has segments down the eager path.
6. ``<backend>.init_forward_metadata`` [``patches.{flashinfer,triton,torch_native}_init_forward_
   metadata``]: takes the segments and plans sub-requests, leaving ``ForwardPlan.msa_kernel``
   (flashinfer with the Triton kernel) or ``ForwardPlan.sub_batch`` (torch_native).
7. ``<backend>.forward_extend`` [``patches.flashinfer_forward_extend``,
   ``patches.torch_native_forward_extend``]: runs attention with them.
8. ``cache_unfinished_req`` / ``cache_finished_req`` [``radix_cache``]: read
   ``RequestPlan.retained``; the finished request's is cleared.

With ``--asymcache-holds on`` a request's first ``match_prefix`` also names its program
(``RequestPlan.program``), and ``cache_finished_req`` releases it (``RequestPlan.in_program``).
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asymcache_sglang.core.segments import Segment
from asymcache_sglang.core.tree import Range, SegmentPlan

if TYPE_CHECKING:
    import torch

    from asymcache_sglang.forward_timer import ForwardTimer
    from asymcache_sglang.radix_cache import HoleAwareRadixCache

# The one attribute AsymCache sets on SGLang's Req, ScheduleBatch, attention backend, ModelRunner.
_STATE = "_asymcache_state"


@dataclass
class RequestPlan:
    """What one Req carries between scheduling steps (steps 1-3 and 8)."""

    # A match with holes, not yet admitted.
    matched: SegmentPlan | None = None
    # The plan PrefillAdder admitted for this round's extend.
    admitted: SegmentPlan | None = None
    # Ranges of the Req's req_to_token row whose slots belong to the tree; None: the leading
    # cache_protected_len tokens, as in stock SGLang.
    retained: list[Range] | None = None
    # The holes this request's last extend recomputed, until its next insert adopts them (or
    # its KV is freed without one): where planned hole tokens end up, for the counters.
    pending_holes: list[Range] | None = None
    # Prefill chunks of this request that recomputed part of a hole plan.
    plan_chunks: int = 0
    # Where the last admitted plan, before it was cut to a chunk, ended: a later chunk's match
    # that ends short of it has lost retained KV.
    plan_end: int = 0
    # The program the request belongs to (--asymcache-holds), named at its first match.
    program: Hashable | None = None
    # While the request counts in its program: until its KV is cached, or it is retracted or
    # dropped unseen by the cache (the finalizer, when SGLang lets go of a waiting request).
    in_program: weakref.finalize | None = None

    def take_matched(self) -> SegmentPlan | None:
        plan, self.matched = self.matched, None
        return plan

    def take_admitted(self) -> SegmentPlan | None:
        plan, self.admitted = self.admitted, None
        return plan


@dataclass(frozen=True)
class ExtendPlan:
    """A ScheduleBatch's multi-segment extend, for its next forward only (steps 3-4)."""

    # Per request, in batch order: its hole segments, then its tail.
    segments: list[list[Segment]]
    # The absolute position (RoPE) of every extend token, in the same order.
    positions: torch.Tensor


@dataclass
class ForwardPlan:
    """What an attention backend carries for the forward being run (steps 4-7)."""

    # The MSA kernel on the flashinfer backend ("flashinfer" or "triton"); None on the others.
    msa_impl: str | None
    # Per request: the segments of this forward's extend; None for a contiguous batch.
    segments: list[list[Segment]] | None = None
    # How many of the batch's trailing requests are running decodes (--enable-mixed-chunk).
    mixed_decodes: int = 0
    # The planned Triton MSA kernel for forward_extend (flashinfer backend, msa_impl triton).
    msa_kernel: Any = None
    # The sub-request view of the ForwardBatch for forward_extend (torch_native backend).
    sub_batch: Any = None

    def take_segments(self, is_extend: bool) -> list[list[Segment]] | None:
        """This forward's segments, consumed so a later forward never sees them."""
        segments, self.segments = self.segments, None
        return segments if is_extend else None


def enabled_cache(tree_cache: object) -> HoleAwareRadixCache | None:
    """The scheduler-side guard: the AsymCache tree, or None when AsymCache is off."""
    # Imported here: radix_cache imports this module.
    from asymcache_sglang.radix_cache import HoleAwareRadixCache

    return tree_cache if isinstance(tree_cache, HoleAwareRadixCache) else None


def request_plan(req: object) -> RequestPlan:
    """The Req's plan state, created empty on first use."""
    state = getattr(req, _STATE, None)
    if state is None:
        state = RequestPlan()
        setattr(req, _STATE, state)
    return state


def set_extend_plan(batch: object, plan: ExtendPlan) -> None:
    setattr(batch, _STATE, plan)


def take_extend_plan(batch: object) -> ExtendPlan | None:
    """The batch's plan, consumed: the ScheduleBatch lives on as the running batch."""
    plan = getattr(batch, _STATE, None)
    if plan is not None:
        setattr(batch, _STATE, None)
    return plan


def attach_forward_plan(backend: object, plan: ForwardPlan) -> None:
    setattr(backend, _STATE, plan)


def forward_plan(backend: object) -> ForwardPlan | None:
    """The backend-side guard: its ForwardPlan, or None when AsymCache is off."""
    return getattr(backend, _STATE, None)


def attach_forward_timer(model_runner: object, timer: ForwardTimer) -> None:
    setattr(model_runner, _STATE, timer)


def forward_timer(model_runner: object) -> ForwardTimer | None:
    """The ModelRunner-side guard: the timer of its forwards, or None when AsymCache is off."""
    return getattr(model_runner, _STATE, None)
