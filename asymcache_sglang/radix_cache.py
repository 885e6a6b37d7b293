"""``HoleAwareRadixCache``: SGLang's RadixCache interface over the hole-aware core tree.

This is the edge where the core meets SGLang 0.5.16: requests, the KV allocator and
``req_to_token``. What a request carries between steps is its ``handoff.RequestPlan``.

With ``page_size`` > 1 the tree holds whole pages, as SGLang's RadixCache does: a request's
partial last page is never inserted; it stays the request's until its last chunk, then is freed.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from sglang.srt.mem_cache.base_prefix_cache import (
    DecLockRefParams,
    DecLockRefResult,
    EvictParams,
    EvictResult,
    IncLockRefResult,
    InsertParams,
    InsertResult,
    MatchPrefixParams,
    MatchResult,
)
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixCache

from asymcache_sglang import handoff
from asymcache_sglang.core.config import AsymCacheConfig
from asymcache_sglang.core.programs import ProgramTracker
from asymcache_sglang.core.tree import (
    CacheNode,
    HoleAwareTree,
    InsertOutcome,
    Range,
    SegmentPlan,
    covered_tokens,
    owned_ranges,
)
from asymcache_sglang.latency_runtime import LatencyRuntime
from asymcache_sglang.tp_agreement import TpAgreement

logger = logging.getLogger(__name__)
# How often the decision digests go to the log (TP ranks compare them there).
DIGEST_LOG_EVERY_EVICTIONS = 1024


@dataclass
class PlanCounters:
    """Hole plans through the scheduler, in tokens unless named otherwise."""

    plans: int = 0
    planned_hole_tokens: int = 0
    retained_tokens: int = 0
    # What meta_info.cached_tokens was credited: retained tokens only.
    cached_tokens: int = 0
    # Chunks inside a plan's first hole (it alone exceeded the chunk): computed as a plain extend
    # from the hole's start (the same work), the plan's retained tail locked until it resumes.
    first_hole_chunks: int = 0
    # Later chunks of a planned request whose match fell short of the plan's end: reuse lost.
    chunk_fallbacks: int = 0
    # Admitted plans SGLang cut into chunks (holes that fit first, the rest in later chunks).
    chunked_plans: int = 0
    # The most prefill chunks one request's hole plan was carried over.
    longest_plan_chunks: int = 0
    # Plans dropped because the request's prefix changed between match and admission.
    stale_plans: int = 0
    # Matches with holes whose request cannot take a plan (multimodal inputs, input embeddings):
    # served from the contiguous prefix, as stock SGLang serves any match.
    unplannable_matches: int = 0
    # Extends with hole plans that also carried running decodes (--enable-mixed-chunk).
    mixed_plan_batches: int = 0
    # Where planned hole tokens ended: adopted into their holes by the request's insert; found
    # refilled by another request first (freed as duplicates); freed with the request's KV, never
    # inserted (a retraction, or an abort SGLang frees without caching). Once idle, the three add
    # up to planned_hole_tokens.
    planned_holes_adopted: int = 0
    planned_holes_refilled_first: int = 0
    planned_holes_discarded: int = 0
    # The hole ranges of every plan run, in order: TP ranks must have the same.
    plans_digest: int = 0


class HoleAwareRadixCache(RadixCache):
    """Radix prefix cache that evicts cheap heads first and recomputes holes on return."""

    # The tree it builds; a subclass may rank eviction its own way (the simulator's prototypes).
    tree_class: type[HoleAwareTree] = HoleAwareTree

    def __init__(
        self,
        params: CacheInitParams,
        config: AsymCacheConfig,
        latency: LatencyRuntime,
        tp_agreement: TpAgreement | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.counters = PlanCounters()
        # Outlives reset(): it models the kernels, not what is cached. Its cost keys eviction.
        self.latency = latency
        # TP > 1: the latency view and clock every rank agrees on.
        self.tp_agreement = tp_agreement
        # What eviction keys and returns read: the agreed clock, a given one (the simulator's),
        # else the host's.
        if clock is None:
            clock = time.monotonic if tp_agreement is None else tp_agreement.clock.now
        self.clock = clock
        self._evict_calls = 0
        # Outlives reset() too: it learns the clients. None: no holds (--asymcache-holds off).
        self.programs = ProgramTracker(clock) if config.holds == "on" else None
        super().__init__(params)

    # ----- lifecycle -----

    def reset(self) -> None:
        self.tree = self.tree_class(
            self.latency.cost,
            self.config.reuse_estimator(),
            max_holes=self.config.max_holes,
            min_retained_tokens=self.config.min_retained_tokens,
            clock=self.clock,
            returns=self.programs,
            page_size=self.page_size,
        )
        self.root_node = self.tree.root
        self.evictable_leaves.clear()
        self._empty_match_result = MatchResult(
            device_indices=torch.empty((0,), dtype=torch.int64, device=self.device),
            last_device_node=self.root_node,
            last_host_node=self.root_node,
            best_match_node=self.root_node,
        )

    # ----- matching -----

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        key = params.key
        req = params.req
        if req is not None:
            handoff.request_plan(req).matched = None
        if self.disable or len(key) == 0:
            return self._empty_match_result
        tokens = key.raw_token_ids()
        path = self.tree.match(tokens, key.extra_key)
        self.tree.maybe_rekey()
        if req is not None and self.programs is not None:
            self._enter_program(req, tokens)
        plan = self.tree.plan(path)
        prefix = self._empty_match_result.device_indices
        if plan.contiguous_len:
            prefix = torch.cat(plan.retained_values[0])
        if req is not None and plan.has_holes:
            if self._msa_allowed(req):
                handoff.request_plan(req).matched = plan
            else:
                self.counters.unplannable_matches += 1
        node = plan.contiguous_node
        return MatchResult(
            device_indices=prefix,
            last_device_node=node,
            last_host_node=node,
            best_match_node=node,
        )

    def _enter_program(self, req: Any, tokens: Sequence[int]) -> None:
        """The first match of a request (the scheduler matches a waiting one on every pass)
        names its program, which it counts in until its KV is cached."""
        assert self.programs is not None
        state = handoff.request_plan(req)
        if state.in_program is not None:
            return
        if state.program is None:
            state.program = self.programs.admit(req.session_id, tokens)
        else:  # retracted, and back
            self.programs.enter(state.program)
        state.in_program = weakref.finalize(req, self.programs.leave, state.program)
        state.in_program.atexit = False

    def _leave_program(self, req: Any, cached_tokens: Sequence[int] | None) -> None:
        """The request is out: its program waits from now (``cached_tokens`` of it cached), or,
        with None, the request left its KV to no one."""
        state = handoff.request_plan(req)
        if state.in_program is None or state.in_program.detach() is None:
            return
        state.in_program = None
        assert self.programs is not None and state.program is not None
        if cached_tokens is None:
            self.programs.leave(state.program)
        else:
            self.programs.release(state.program, cached_tokens)

    def _msa_allowed(self, req: Any) -> bool:
        """Holes need plain token input (holes only exist with a backend that has an MSA plan).

        Input logprobs are fine: the match stops at ``logprob_start_len``, so holes never need them.
        Requests with positional embedding overrides never match, so they never get here.
        """
        return req.multimodal_inputs is None and req.input_embeds is None

    def composite_prefix(self, plan: SegmentPlan) -> torch.Tensor:
        """Prefix of length M with retained slots in place and -1 where holes will get slots."""
        out = torch.full((plan.prefix_len,), -1, dtype=torch.int64, device=self.device)
        for (s, e), values in zip(plan.retained, plan.retained_values):
            out[s:e] = torch.cat(values)
        return out

    # ----- insertion and release -----

    @staticmethod
    def retained_ranges(req: Any) -> list[Range]:
        """Ranges of the request's req_to_token row whose slots belong to the tree."""
        retained = handoff.request_plan(req).retained
        if retained is not None:
            return retained
        return [(0, req.cache_protected_len)] if req.cache_protected_len else []

    def insert(self, params: InsertParams) -> InsertResult:
        raise NotImplementedError(
            "HoleAwareRadixCache inserts through cache_finished_req/cache_unfinished_req, "
            "which know which slots the request owns"
        )

    def _free(self, values: list[Any]) -> None:
        if values:
            self.token_to_kv_pool_allocator.free(torch.cat(values))

    def cache_finished_req(
        self, req: Any, is_insert: bool = True, *, kv_len_to_handle: int
    ) -> None:
        if self.disable:
            super().cache_finished_req(req, is_insert, kv_len_to_handle=kv_len_to_handle)
            return
        if self.disable_finished_insert:
            is_insert = False
        token_ids = (req.origin_input_ids + req.output_ids)[:kv_len_to_handle]
        kv_indices = self.req_to_token_pool.req_to_token[req.req_pool_idx, : len(token_ids)]
        kv_indices = kv_indices.to(dtype=torch.int64, copy=True)
        retained = self.retained_ranges(req)
        if is_insert:
            token_ids, kv_indices, partial_page = self._whole_pages(token_ids, kv_indices)
            self.token_to_kv_pool_allocator.free(partial_page)
            outcome = self.tree.insert(token_ids, kv_indices, retained, req.extra_key)
            self._free(outcome.duplicates)
            self._settle_holes(req, outcome)
            # A request of a program leaves its path tagged with it.
            program = self.program_of(req)
            if program is not None:
                self.tree.tag(outcome.last_node, program)
        else:
            self._free([kv_indices[s:e] for s, e in owned_ranges(0, len(kv_indices), retained)])
            self._settle_holes(req, None)
        if req.last_node is not None:
            self.dec_lock_ref(req.last_node)
        handoff.request_plan(req).retained = None
        self._leave_program(req, token_ids if is_insert else None)

    def cache_unfinished_req(self, req: Any, chunked: bool = False) -> None:
        if self.disable:
            return
        token_ids = req.get_fill_ids()
        kv_indices = self.req_to_token_pool.req_to_token[req.req_pool_idx, : len(token_ids)]
        kv_indices = kv_indices.to(dtype=torch.int64, copy=True)
        retained = self.retained_ranges(req)
        token_ids, kv_indices, partial_page = self._whole_pages(token_ids, kv_indices)
        outcome = self.tree.insert(token_ids, kv_indices, retained, req.extra_key)
        self._free(outcome.duplicates)
        self._settle_holes(req, outcome)
        new_indices = torch.cat(outcome.path_values) if outcome.path_values else kv_indices[:0]
        assert len(new_indices) == len(token_ids), f"{len(new_indices)=} {len(token_ids)=}"
        # The leading retained range already holds the tree's slots; rewrite only from its end.
        start = retained[0][1] if retained and retained[0][0] == 0 else 0
        self.req_to_token_pool.write(
            (req.req_pool_idx, slice(start, len(new_indices))), new_indices[start:]
        )
        self.inc_lock_ref(outcome.last_node)
        if req.last_node is not None:
            self.dec_lock_ref(req.last_node)
        req.last_node = outcome.last_node
        req.cache_protected_len = len(new_indices)
        handoff.request_plan(req).retained = [(0, len(new_indices))]
        # The partial last page stays the request's: its next chunk or its finish inserts it.
        if len(partial_page):
            new_indices = torch.cat([new_indices, partial_page])
        req.prefix_indices = new_indices

    def _whole_pages(
        self, token_ids: Sequence[int], kv_indices: torch.Tensor
    ) -> tuple[Sequence[int], torch.Tensor, torch.Tensor]:
        """The request's tokens and slots in whole pages, which the tree holds, and the slots of
        its partial last page (none at page size 1: nothing is copied)."""
        aligned = len(token_ids) - len(token_ids) % self.page_size
        if aligned == len(token_ids):
            return token_ids, kv_indices, kv_indices[:0]
        return token_ids[:aligned], kv_indices[:aligned], kv_indices[aligned:]

    def _settle_holes(self, req: Any, outcome: InsertOutcome | None) -> None:
        """Count where the holes the request's last extend recomputed went: its insert's
        ``outcome`` adopted them or found them refilled; without one they were freed."""
        request = handoff.request_plan(req)
        holes, request.pending_holes = request.pending_holes, None
        if not holes:
            return
        total = sum(e - s for s, e in holes)
        if outcome is None:
            self.counters.planned_holes_discarded += total
            return
        adopted = covered_tokens(holes, outcome.adopted_ranges)
        self.counters.planned_holes_adopted += adopted
        self.counters.planned_holes_refilled_first += total - adopted

    def program_of(self, req: Any) -> Hashable | None:
        """The program a request belongs to: the one its first match named (with holds), else
        the one it names with SGLang's ``session_id``."""
        program = handoff.request_plan(req).program
        return getattr(req, "session_id", None) if program is None else program

    def release_radix_session(self, session_id: str) -> int:
        """SGLang's close of a radix session: the program ``session_id`` ended, so the KV only
        it held goes first on eviction (SGLang's mixin frees it at once). Returns those tokens."""
        if self.programs is not None:
            self.programs.close(session_id)
        return self.tree.release(session_id)

    # ----- eviction and locks -----

    def evict(self, params: EvictParams) -> EvictResult:
        if self.disable:
            return EvictResult()
        start = time.perf_counter()
        before = self.tree.evictable_size
        freed = self.tree.evict(params.num_tokens)
        self._free(freed)
        num = before - self.tree.evictable_size  # a tensor's len() per node costs more
        self.update_eviction_metrics(num, start)
        self._evict_calls += 1
        if self._evict_calls % DIGEST_LOG_EVERY_EVICTIONS == 0:
            # Each TP rank logs its own: the lines of one count must match across ranks.
            logger.info(
                "AsymCache decisions after %d eviction calls: evicted nodes %08x, plans %08x, "
                "chunks %08x",
                self._evict_calls,
                self.tree.stats.evicted_nodes_digest,
                self.counters.plans_digest,
                self.latency.counters.chunks_digest,
            )
        return EvictResult(num_tokens_evicted=num)

    def inc_lock_ref(self, node: CacheNode) -> IncLockRefResult:
        if self.disable:
            return IncLockRefResult(delta=0)
        return IncLockRefResult(delta=self.tree.inc_lock(node))

    def dec_lock_ref(
        self, node: CacheNode, params: DecLockRefParams | None = None
    ) -> DecLockRefResult:
        if self.disable:
            return DecLockRefResult(delta=0)
        return DecLockRefResult(delta=self.tree.dec_lock(node))

    def evictable_size(self) -> int:
        return self.tree.evictable_size

    def protected_size(self) -> int:
        return self.tree.protected_size

    def full_evictable_size(self) -> int:
        return self.tree.evictable_size

    def full_protected_size(self) -> int:
        return self.tree.protected_size

    # ----- inspection -----

    def all_values_flatten(self) -> torch.Tensor:
        values = self.tree.resident_values()
        if not values:
            return self._empty_match_result.device_indices
        return torch.cat(values)

    def total_size(self) -> int:
        return self.tree.evictable_size + self.tree.protected_size

    def pretty_print(self) -> None:
        for node in self.tree.iter_nodes():
            print(node)
        print(f"#resident tokens: {self.tree.resident_tokens()}, #hole: {self.tree.hole_tokens()}")

    def stats_snapshot(self) -> dict[str, int]:
        """Plan, chunk and tree counters, as /get_server_info shows them."""
        return {
            **asdict(self.counters),
            **asdict(self.latency.counters),
            **asdict(self.tree.stats),
            "resident_tokens": self.tree.evictable_size + self.tree.protected_size,
            "hole_tokens": self.tree.hole_tokens(),
            **(self.programs.counts() if self.programs is not None else {}),
        }
