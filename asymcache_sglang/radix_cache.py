"""``HoleAwareRadixCache``: SGLang's RadixCache interface over the hole-aware core tree.

This is the edge where the core meets SGLang 0.5.16: requests, the KV allocator and
``req_to_token``. Request state it keeps on ``Req``:

- ``asymcache_plan``: the last match's ``SegmentPlan`` when it has holes (not yet admitted);
- ``asymcache_admitted_plan``: the plan PrefillAdder admitted for this round's extend;
- ``asymcache_retained``: ranges of the request's ``req_to_token`` row whose slots belong to the
  tree; every other slot up to the committed length belongs to the request.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
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

from asymcache_sglang.chunk_policy import pick_chunk
from asymcache_sglang.config import LATENCY_TRACE_ENV, AsymCacheConfig
from asymcache_sglang.forward_timer import ForwardTimer
from asymcache_sglang.latency_model import (
    BatchFeatures,
    DecodeStepTracker,
    LatencyCostModel,
    LatencyView,
    OnlineLatencyModel,
)
from asymcache_sglang.metrics import LatencyMetrics
from asymcache_sglang.tree import CacheNode, HoleAwareTree, Range, SegmentPlan, owned_ranges

logger = logging.getLogger(__name__)
# How often the latency model's coefficients and fit quality go to the log.
LOG_EVERY_FORWARDS = 500
# With TP > 1, scheduling passes between broadcasts of rank 0's latency fit.
LATENCY_SYNC_EVERY = 16
# Gauges are cheap to set, the fit's state a little less so: refresh them every few forwards.
METRICS_EVERY_FORWARDS = 20


class HoleAwareRadixCache(RadixCache):
    """Radix prefix cache that evicts cheap heads first and recomputes holes on return."""

    def __init__(self, params: CacheInitParams, config: AsymCacheConfig) -> None:
        if params.page_size != 1:
            raise ValueError(f"AsymCache needs page_size 1, got {params.page_size}")
        self.config = config
        self.counters = {
            "plans": 0,
            "planned_hole_tokens": 0,
            "retained_tokens": 0,
            "cached_tokens": 0,
            "chunk_fallbacks": 0,
            # Extends with hole plans that also carried running decodes (--enable-mixed-chunk).
            "mixed_plan_batches": 0,
            "timed_forwards": 0,
            "chunk_decisions": 0,
            "chunk_below_launch_size": 0,
            # The subset taken beside running decodes, under the TPOT budget.
            "budget_chunk_decisions": 0,
            "budget_chunk_below_launch_size": 0,
        }
        self.last_chunk: int | None = None
        self.metrics = LatencyMetrics() if config.enable_metrics else None
        # Outlives reset(): it models the kernels, not what is cached.
        self.latency_model = OnlineLatencyModel(min_r2=config.latency_min_r2)
        self.decode_steps = DecodeStepTracker()
        # What eviction and chunking read: published per update (TP 1) or by rank 0 (TP > 1).
        self.latency_cost = LatencyCostModel(config.cost_model())
        self.latency_syncs = 0
        trace_path = os.environ.get(LATENCY_TRACE_ENV)
        self.latency_trace = open(trace_path, "a", buffering=1) if trace_path else None  # noqa: SIM115
        super().__init__(params)

    # ----- lifecycle -----

    def reset(self) -> None:
        self.tree = HoleAwareTree(
            self.latency_cost,
            self.config.reuse_estimator(),
            max_holes=self.config.max_holes,
            min_retained_tokens=self.config.min_retained_tokens,
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
            req.asymcache_plan = None
        if self.disable or len(key) == 0:
            return self._empty_match_result
        path = self.tree.match(key.raw_token_ids(), key.extra_key)
        self.tree.maybe_rekey()
        plan = self.tree.plan(path)
        prefix = self._empty_match_result.device_indices
        if plan.contiguous_len:
            prefix = torch.cat(plan.retained_values[0])
        if req is not None and plan.has_holes and self._msa_allowed(req):
            req.asymcache_plan = plan
        node = plan.contiguous_node
        return MatchResult(
            device_indices=prefix,
            last_device_node=node,
            last_host_node=node,
            best_match_node=node,
        )

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
        retained = getattr(req, "asymcache_retained", None)
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
            outcome = self.tree.insert(token_ids, kv_indices, retained, req.extra_key)
            self._free(outcome.duplicates)
        else:
            self._free([kv_indices[s:e] for s, e in owned_ranges(0, len(kv_indices), retained)])
        if req.last_node is not None:
            self.dec_lock_ref(req.last_node)
        req.asymcache_retained = None

    def cache_unfinished_req(self, req: Any, chunked: bool = False) -> None:
        if self.disable:
            return
        token_ids = req.get_fill_ids()
        kv_indices = self.req_to_token_pool.req_to_token[req.req_pool_idx, : len(token_ids)]
        kv_indices = kv_indices.to(dtype=torch.int64, copy=True)
        retained = self.retained_ranges(req)
        outcome = self.tree.insert(
            token_ids, kv_indices, retained, req.extra_key, count_hit=not chunked
        )
        self._free(outcome.duplicates)
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
        req.prefix_indices = new_indices
        req.cache_protected_len = len(new_indices)
        req.asymcache_retained = [(0, len(new_indices))]

    # ----- eviction and locks -----

    def evict(self, params: EvictParams) -> EvictResult:
        if self.disable:
            return EvictResult()
        start = time.perf_counter()
        freed = self.tree.evict(params.num_tokens)
        self._free(freed)
        num = sum(len(v) for v in freed)
        self.update_eviction_metrics(num, start)
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

    # ----- latency model and adaptive chunking -----

    def forward_timer(self, device: str) -> ForwardTimer:
        """The timer the ModelRunner.forward hook brackets every forward with."""
        return ForwardTimer(self.observe_forward, use_cuda=str(device).startswith("cuda"))

    def observe_forward(self, features: BatchFeatures, seconds: float) -> None:
        """One timed forward: refit the latency model; decode-only steps set the TPOT default."""
        if not seconds > 0:
            return
        self.counters["timed_forwards"] += 1
        predicted = self.latency_model.update(features, seconds)
        if self.latency_trace is not None:
            record = {**asdict(features), "seconds": seconds, "predicted": predicted}
            self.latency_trace.write(json.dumps(record) + "\n")
        self.decode_steps.observe(features, seconds)
        if (
            self.metrics is not None
            and self.counters["timed_forwards"] % METRICS_EVERY_FORWARDS == 0
        ):
            self.metrics.observe_model(self.latency_model.state())
        if self.config.tp_size == 1:
            self.latency_cost.view = LatencyView.of(self.latency_model, self.decode_steps)
        if self.counters["timed_forwards"] % LOG_EVERY_FORWARDS == 0:
            logger.info("AsymCache latency model: %s", self.latency_snapshot())

    def sync_latency(self, broadcast: Callable[[LatencyView], LatencyView]) -> None:
        """TP > 1, at a scheduling point every rank reaches in the same order: publish rank 0's fit.

        ``broadcast`` sends its argument from rank 0 and returns rank 0's on every rank. Runs once
        per ``LATENCY_SYNC_EVERY`` calls, a count every rank shares.
        """
        if self.latency_syncs % LATENCY_SYNC_EVERY == 0:
            self.latency_cost.view = broadcast(
                LatencyView.of(self.latency_model, self.decode_steps)
            )
        self.latency_syncs += 1

    def choose_chunk(
        self, *, prefix_len: int, running_reqs: list[Any], max_chunk: int, page_size: int
    ) -> int:
        """This pass's prefill chunk; the launch-time chunk until the published fit is ready."""
        view = self.latency_cost.view
        if not view.ready:
            return max_chunk
        decode_seq_lens = [req.seqlen for req in running_reqs]
        budget_s = self.tpot_budget_s()
        decision = pick_chunk(
            view.predict,
            prefix_len=prefix_len,
            decode_seq_lens=decode_seq_lens,
            max_chunk=max_chunk,
            page_size=page_size,
            tpot_budget_s=budget_s,
        )
        below = decision.chunk < max_chunk
        self.counters["chunk_decisions"] += 1
        self.counters["chunk_below_launch_size"] += below
        if decode_seq_lens and budget_s is not None:
            self.counters["budget_chunk_decisions"] += 1
            self.counters["budget_chunk_below_launch_size"] += below
        self.last_chunk = decision.chunk
        if self.metrics is not None:
            self.metrics.observe_chunk(decision.chunk)
        return decision.chunk

    def tpot_budget_s(self) -> float | None:
        """--asymcache-tpot-budget-ms, else the default from the measured decode and extend."""
        if self.config.tpot_budget_ms is not None:
            return self.config.tpot_budget_ms / 1e3
        return self.latency_cost.view.tpot_budget_s

    def latency_snapshot(self) -> dict[str, Any]:
        """The latency model's fit and the last chunk decision, for /get_server_info and logs."""
        return {
            **self.latency_model.state(),
            # What decisions use: with TP > 1 rank 0's fit as of the last broadcast.
            "published_ready": self.latency_cost.view.ready,
            "tpot_budget_s": self.tpot_budget_s(),
            "last_chunk": self.last_chunk,
        }

    def stats_snapshot(self) -> dict[str, int]:
        """Counters for /server_info-style reporting and tests."""
        s = self.tree.stats
        return {
            **self.counters,
            "evicted_tokens": s.evicted_tokens,
            "interior_evicted_tokens": s.interior_evicted_tokens,
            "adopted_hole_tokens": s.adopted_hole_tokens,
            "duplicate_recompute_tokens": s.duplicate_recompute_tokens,
            "collected_hole_nodes": s.collected_hole_nodes,
            "fallback_plans": s.fallback_plans,
            "resident_tokens": self.tree.evictable_size + self.tree.protected_size,
            "hole_tokens": self.tree.hole_tokens(),
        }
