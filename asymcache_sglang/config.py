"""AsymCache settings, decoupled from SGLang's ServerArgs so the core can be built in tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asymcache_sglang.cost import ReuseEstimator, StaticCostModel

# Attention backends that have a multi-segment (sub-request) plan; others fall back to contiguous.
MSA_BACKENDS = ("torch_native", "flashinfer", "triton")
# Kernels for multi-segment extends on the flashinfer backend (see --asymcache-msa-impl).
MSA_IMPLS = ("flashinfer", "triton")
CHUNKING_MODES = ("adaptive", "static")

# A JSONL file that gets every timed forward (features, seconds, the prediction made before it):
# the data to check or refit the latency model offline.
LATENCY_TRACE_ENV = "ASYMCACHE_LATENCY_TRACE"


@dataclass(frozen=True)
class AsymCacheConfig:
    max_holes: int = 8
    min_retained_tokens: int = 16
    cost_a: float = 1.0
    cost_b: float = 1.0 / 1024
    reuse_horizon_s: float = 60.0
    share_boost: float = 1.0
    # "flashinfer" or "triton" on the flashinfer backend; None elsewhere (the backend's own).
    msa_impl: str | None = None
    # Per-pass prefill chunk from the latency model, or SGLang's fixed --chunked-prefill-size.
    chunking: str = "static"
    # TPOT budget for chunks that run beside decodes; None: derived from the measured decode step.
    tpot_budget_ms: float | None = None
    # The latency model replaces the static costs once its held-out R^2 reaches this.
    latency_min_r2: float = 0.9
    # Export the latency model's fit and the chunk decisions as Prometheus gauges.
    enable_metrics: bool = False
    # With TP > 1 rank 0's latency fit is broadcast; each rank's own timings decide nothing.
    tp_size: int = 1

    @classmethod
    def from_server_args(cls, server_args: Any) -> AsymCacheConfig:
        """Read the ``asymcache_*`` fields.

        Holes need an attention backend with an MSA plan; elsewhere max_holes is 0, which makes
        the tree evict leaves only (cost-aware, prefix-closed, like stock SGLang).
        """
        backend = server_args.prefill_attention_backend or server_args.attention_backend
        return cls(
            max_holes=server_args.asymcache_max_holes if backend in MSA_BACKENDS else 0,
            min_retained_tokens=server_args.asymcache_min_retained_tokens,
            cost_a=server_args.asymcache_cost_a,
            cost_b=server_args.asymcache_cost_b,
            reuse_horizon_s=server_args.asymcache_reuse_horizon_s,
            share_boost=server_args.asymcache_share_boost,
            msa_impl=(server_args.asymcache_msa_impl or "flashinfer")
            if backend == "flashinfer"
            else None,
            chunking=server_args.asymcache_chunking,
            tpot_budget_ms=server_args.asymcache_tpot_budget_ms,
            latency_min_r2=server_args.asymcache_latency_min_r2,
            enable_metrics=server_args.enable_metrics,
            tp_size=server_args.tp_size,
        )

    def cost_model(self) -> StaticCostModel:
        return StaticCostModel(self.cost_a, self.cost_b)

    def reuse_estimator(self) -> ReuseEstimator:
        return ReuseEstimator(self.reuse_horizon_s, self.share_boost)
