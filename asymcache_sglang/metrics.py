"""Prometheus gauges for the latency model and chunking, beside SGLang's (``--enable-metrics``).

They are created in the scheduler process, after SGLang has set ``PROMETHEUS_MULTIPROC_DIR``, and
use the multiprocess mode of SGLang's scheduler gauges, so ``/metrics`` shows them.
"""

from __future__ import annotations

from asymcache_sglang.core.latency_fit import TERMS, LatencyState


class LatencyMetrics:
    """Fit quality, coefficients and the last chunk decision."""

    def __init__(self) -> None:
        from prometheus_client import Gauge

        self.r2 = Gauge(
            "asymcache:latency_r2",
            "Held-out R^2 of AsymCache's online step-time model.",
            multiprocess_mode="mostrecent",
        )
        self.error = Gauge(
            "asymcache:latency_mean_abs_pct_error",
            "Mean |predicted - measured| / measured step time over the window, in percent.",
            multiprocess_mode="mostrecent",
        )
        self.coefficient = Gauge(
            "asymcache:latency_coefficient",
            "Step-time model coefficient (seconds per unit of its term).",
            labelnames=["term"],
            multiprocess_mode="mostrecent",
        )
        self.chunk = Gauge(
            "asymcache:prefill_chunk_tokens",
            "Prefill chunk size AsymCache chose for the last scheduling pass.",
            multiprocess_mode="mostrecent",
        )

    def observe_model(self, state: LatencyState) -> None:
        for term, value in zip(TERMS, state.coefficients, strict=True):
            self.coefficient.labels(term=term).set(value)
        if state.r2 is not None:
            self.r2.set(state.r2)
        if state.mean_abs_pct_error is not None:
            self.error.set(state.mean_abs_pct_error)

    def observe_chunk(self, chunk: int) -> None:
        self.chunk.set(chunk)
