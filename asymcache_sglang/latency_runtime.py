"""The latency model at run time: timed forwards in; eviction cost, chunk sizes and state out.

One per scheduler, built by the plugin's cache factory. ``observe_forward`` takes every timed
forward; decisions (the eviction cost and ``choose_chunk``) read a published ``LatencyView``:
with TP 1 every update publishes one, with TP > 1 ``TpAgreement`` publishes TP rank 0's on every
rank.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from asymcache_sglang.core.chunk_policy import ChunkDecision, pick_chunk
from asymcache_sglang.core.config import AsymCacheConfig
from asymcache_sglang.core.cost import LatencyCostModel
from asymcache_sglang.core.digest import digest_of
from asymcache_sglang.core.latency_fit import (
    BatchFeatures,
    LatencyState,
    LatencyView,
    OnlineLatencyModel,
    extend_cost_model,
)
from asymcache_sglang.core.tpot_budget import DecodeStepTracker
from asymcache_sglang.metrics import LatencyMetrics

logger = logging.getLogger(__name__)
# How often the latency model's coefficients and fit quality go to the log.
LOG_EVERY_FORWARDS = 500
# Gauges are cheap to set, the fit's state a little less so: refresh them every few forwards.
METRICS_EVERY_FORWARDS = 20


@dataclass
class ChunkCounters:
    """Timed forwards and adaptive chunk decisions, for /get_server_info."""

    timed_forwards: int = 0
    chunk_decisions: int = 0
    chunk_below_launch_size: int = 0
    # The subset taken beside running decodes, under the TPOT budget.
    budget_chunk_decisions: int = 0
    budget_chunk_below_launch_size: int = 0
    # The chunks chosen, in order: TP ranks must have the same.
    chunks_digest: int = 0


@dataclass(frozen=True)
class LatencySnapshot:
    """The fit, and what decisions use: with TP > 1 rank 0's fit as of the last broadcast."""

    fit: LatencyState
    # The extend-only fit whose c1 and c2 give eviction its position-aware cost.
    extend_fit: LatencyState
    published_ready: bool
    tpot_budget_s: float | None
    last_chunk: int | None

    def as_json(self) -> dict[str, Any]:
        """The fit's fields and the decision fields side by side, as /get_server_info shows."""
        out = asdict(self)
        return {**out.pop("fit"), **out}


class LatencyRuntime:
    """The online latency model of one scheduler, its published view and its chunk decisions."""

    def __init__(self, config: AsymCacheConfig) -> None:
        self.config = config
        self.model = OnlineLatencyModel(min_r2=config.latency_min_r2)
        self.extend_model = extend_cost_model(config.latency_min_r2)
        self.decode_steps = DecodeStepTracker()
        # The eviction cost of the cache's tree; its view is what every decision reads.
        self.cost = LatencyCostModel(config.cost_model(), config.recompute_chunk_tokens)
        self.counters = ChunkCounters()
        self.last_chunk: int | None = None
        self.metrics = LatencyMetrics() if config.enable_metrics else None
        self._trace = None
        if config.latency_trace_path:
            self._trace = open(config.latency_trace_path, "a", buffering=1)  # noqa: SIM115
            weakref.finalize(self, self._trace.close)

    @property
    def view(self) -> LatencyView:
        return self.cost.view

    def observe_forward(
        self, features: BatchFeatures, seconds: float, launched_s: float | None = None
    ) -> None:
        """One timed forward: refit the model (and the extend cost model on a pure extend);
        decode-only steps set the TPOT default. ``launched_s`` (the host's perf_counter when the
        forward was launched) goes to the trace, whose gaps then show the host time per step."""
        if not seconds > 0:
            return
        self.counters.timed_forwards += 1
        predicted = self.model.update(features, seconds)
        if features.prices_recompute:
            self.extend_model.update(features, seconds)
        if self._trace is not None:
            record = {**asdict(features), "seconds": seconds, "predicted": predicted}
            if launched_s is not None:
                record["launched_s"] = launched_s
            self._trace.write(json.dumps(record) + "\n")
        self.decode_steps.observe(features, seconds)
        n = self.counters.timed_forwards
        if self.metrics is not None and n % METRICS_EVERY_FORWARDS == 0:
            self.metrics.observe_model(self.model.state())
        if self.config.tp_size == 1:
            self.cost.view = self.local_view()
        if n % LOG_EVERY_FORWARDS == 0:
            logger.info("AsymCache latency model: %s", self.snapshot().as_json())

    def publish(self, view: LatencyView) -> None:
        """With TP > 1: the view decisions read from now on (TP rank 0's, ``TpAgreement``)."""
        self.cost.view = view

    def choose_chunk(
        self, *, prefix_len: int, decode_seq_lens: Sequence[int], max_chunk: int, page_size: int
    ) -> ChunkDecision | None:
        """This pass's prefill chunk; None (keep the launch-time chunk) until the view is ready."""
        if not self.view.ready:
            return None
        budget_s = self.tpot_budget_s()
        decision = pick_chunk(
            self.view.predict,
            prefix_len=prefix_len,
            decode_seq_lens=decode_seq_lens,
            max_chunk=max_chunk,
            page_size=page_size,
            tpot_budget_s=budget_s,
        )
        below = decision.chunk < max_chunk
        self.counters.chunk_decisions += 1
        self.counters.chunks_digest = digest_of(self.counters.chunks_digest, decision.chunk)
        self.counters.chunk_below_launch_size += below
        if decode_seq_lens and budget_s is not None:
            self.counters.budget_chunk_decisions += 1
            self.counters.budget_chunk_below_launch_size += below
        self.last_chunk = decision.chunk
        if self.metrics is not None:
            self.metrics.observe_chunk(decision.chunk)
        return decision

    def tpot_budget_s(self) -> float | None:
        """--asymcache-tpot-budget-ms, else the default from the measured decode and extend."""
        if self.config.tpot_budget_ms is not None:
            return self.config.tpot_budget_ms / 1e3
        return self.view.tpot_budget_s

    def snapshot(self) -> LatencySnapshot:
        return LatencySnapshot(
            fit=self.model.state(),
            extend_fit=self.extend_model.state(),
            published_ready=self.view.ready,
            tpot_budget_s=self.tpot_budget_s(),
            last_chunk=self.last_chunk,
        )

    def local_view(self) -> LatencyView:
        """This rank's own fit, as a view."""
        return LatencyView.of(self.model, self.decode_steps, self.extend_model)
