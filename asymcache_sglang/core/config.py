"""Every AsymCache setting, and every check on it: built from SGLang's ServerArgs or in tests.

``AsymCacheConfig.from_server_args`` refuses the SGLang flags AsymCache cannot honour;
``AsymCacheConfig.__post_init__`` checks each setting's range. Both raise ``AsymCacheArgsError``
with a one-line message naming the flag. Server args are read by name, not imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from asymcache_sglang.core.cost import StaticCostModel
from asymcache_sglang.core.reuse import ReuseEstimator

# Attention backends with a multi-segment (sub-request) plan: the only ones AsymCache runs on.
ATTENTION_BACKENDS = ("flashinfer", "triton", "torch_native")
# Kernels for multi-segment extends on the flashinfer backend (--asymcache-msa-impl).
MSA_IMPLS = ("flashinfer", "triton")
CHUNKING_MODES = ("adaptive", "static")
# Soft holds for programs (--asymcache-holds): on, or off (the cost key alone).
HOLDS_MODES = ("on", "off")
# KV cache dtypes the Triton MSA kernel reads (it has no dequantisation).
TRITON_MSA_KV_DTYPES = ("auto", "bfloat16", "bf16")

# A JSONL file that gets every timed forward (features, seconds, the prediction made before it):
# the data to check or refit the latency model offline.
LATENCY_TRACE_ENV = "ASYMCACHE_LATENCY_TRACE"
# SGLang 0.5.16's default --chunked-prefill-size on H100/H200-class GPUs.
SGLANG_GPU_CHUNK_TOKENS = 8192


class AsymCacheArgsError(ValueError):
    """A setting or flag combination AsymCache cannot honour."""


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
    # Where every timed forward is appended as JSON (ASYMCACHE_LATENCY_TRACE); None: nowhere.
    latency_trace_path: str | None = None
    # The extend size evicted KV is recomputed in: --chunked-prefill-size (else the prefill cap).
    recompute_chunk_tokens: int = SGLANG_GPU_CHUNK_TOKENS
    # Rank the KV of programs by when each is expected back (ProgramTracker), a soft hold.
    holds: str = "on"

    def __post_init__(self) -> None:
        checks = [
            (self.max_holes >= 0, "--asymcache-max-holes must be >= 0"),
            (self.min_retained_tokens >= 1, "--asymcache-min-retained-tokens must be >= 1"),
            (self.cost_a > 0, "--asymcache-cost-a must be > 0"),
            (self.cost_b >= 0, "--asymcache-cost-b must be >= 0"),
            (self.reuse_horizon_s > 0, "--asymcache-reuse-horizon-s must be > 0"),
            (self.share_boost >= 0, "--asymcache-share-boost must be >= 0"),
            (self.msa_impl in (None, *MSA_IMPLS), f"--asymcache-msa-impl must be in {MSA_IMPLS}"),
            (self.chunking in CHUNKING_MODES, f"--asymcache-chunking must be in {CHUNKING_MODES}"),
            (
                self.tpot_budget_ms is None or self.tpot_budget_ms > 0,
                "--asymcache-tpot-budget-ms must be > 0",
            ),
            (0.0 <= self.latency_min_r2 <= 1.0, "--asymcache-latency-min-r2 must be in [0, 1]"),
            (self.tp_size >= 1, "--tp-size must be >= 1"),
            (self.recompute_chunk_tokens >= 1, "--chunked-prefill-size must be >= 1 or -1"),
            (self.holds in HOLDS_MODES, f"--asymcache-holds must be in {HOLDS_MODES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise AsymCacheArgsError(message)

    @classmethod
    def from_server_args(cls, args: Any) -> AsymCacheConfig:
        """The settings of SGLang ServerArgs ``args``, after refusing what AsymCache cannot run."""
        refuse_unsupported_flags(args)
        backend = prefill_attention_backend(args)
        return cls(
            max_holes=args.asymcache_max_holes,
            min_retained_tokens=args.asymcache_min_retained_tokens,
            cost_a=args.asymcache_cost_a,
            cost_b=args.asymcache_cost_b,
            reuse_horizon_s=args.asymcache_reuse_horizon_s,
            share_boost=args.asymcache_share_boost,
            msa_impl=(args.asymcache_msa_impl or "flashinfer") if backend == "flashinfer" else None,
            chunking=args.asymcache_chunking,
            tpot_budget_ms=args.asymcache_tpot_budget_ms,
            latency_min_r2=args.asymcache_latency_min_r2,
            enable_metrics=args.enable_metrics,
            tp_size=args.tp_size,
            latency_trace_path=os.environ.get(LATENCY_TRACE_ENV) or None,
            recompute_chunk_tokens=recompute_chunk_tokens(args),
            holds=args.asymcache_holds,
        )

    def cost_model(self) -> StaticCostModel:
        return StaticCostModel(self.cost_a, self.cost_b)

    def reuse_estimator(self) -> ReuseEstimator:
        return ReuseEstimator(self.reuse_horizon_s, self.share_boost)


def recompute_chunk_tokens(args: Any) -> int:
    """The largest extend SGLang runs: the chunk, or with chunking off the prefill token cap.

    Before ServerArgs resolves its GPU-dependent default chunk, SGLang's H100/H200 value.
    """
    chunk = args.chunked_prefill_size
    if chunk is None:
        return SGLANG_GPU_CHUNK_TOKENS
    return chunk if chunk > 0 else args.max_prefill_tokens


def attention_backend(args: Any) -> str:
    """``--attention-backend``, defaulting to one with a multi-segment plan.

    SGLang's Hopper default, fa3, has none: flashinfer on GPUs, torch_native on the CPU.
    """
    if args.attention_backend is not None:
        return args.attention_backend
    return "torch_native" if args.device == "cpu" else "flashinfer"


def prefill_attention_backend(args: Any) -> str:
    """The backend that runs extends, hole plans included."""
    return args.prefill_attention_backend or attention_backend(args)


def refuse_unsupported_flags(args: Any) -> None:
    """Raise for the first SGLang flag AsymCache cannot honour."""
    refused = [
        (args.disable_radix_cache, "--disable-radix-cache"),
        (args.enable_hierarchical_cache, "--enable-hierarchical-cache"),
        (args.speculative_algorithm is not None, "--speculative-algorithm"),
        (args.enable_dp_attention, "--enable-dp-attention"),
        (args.pp_size > 1, "--pp-size > 1"),
        (args.enable_lmcache, "--enable-lmcache"),
        (args.enable_flexkv, "--enable-flexkv"),
        (args.enable_session_radix_cache, "--enable-session-radix-cache"),
        (args.enable_streaming_session, "--enable-streaming-session"),
        (args.kv_events_config is not None, "--kv-events-config"),
        (args.dllm_algorithm is not None, "--dllm-algorithm"),
        (args.radix_cache_backend not in (None, "asymcache"), "--radix-cache-backend"),
    ]
    for bad, flag in refused:
        if bad:
            raise AsymCacheArgsError(f"--enable-asymcache cannot be combined with {flag}")
    if args.asymcache_msa_impl == "triton" and args.kv_cache_dtype not in TRITON_MSA_KV_DTYPES:
        raise AsymCacheArgsError(
            "--asymcache-msa-impl triton reads an unquantised KV cache; "
            f"--kv-cache-dtype {args.kv_cache_dtype} is not supported"
        )
    backend = prefill_attention_backend(args)
    decode_backend = args.decode_attention_backend or attention_backend(args)
    if decode_backend != backend:
        # SGLang then wraps both in one HybridAttnBackend, which the MSA hooks do not see into.
        raise AsymCacheArgsError(
            "--enable-asymcache needs one attention backend for prefill and decode; got "
            f"--prefill-attention-backend {backend} and --decode-attention-backend {decode_backend}"
        )
    if backend not in ATTENTION_BACKENDS:
        raise AsymCacheArgsError(
            f"--enable-asymcache supports --attention-backend in {ATTENTION_BACKENDS}, "
            f"got {backend}"
        )
    if args.enable_deterministic_inference and backend == "triton":
        # The triton backend's deterministic path ignores the sub-request plan.
        raise AsymCacheArgsError(
            "--enable-asymcache cannot be combined with --enable-deterministic-inference "
            "on the triton attention backend"
        )
    if args.asymcache_msa_impl is not None and backend != "flashinfer":
        raise AsymCacheArgsError(
            f"--asymcache-msa-impl chooses the kernel on the flashinfer attention "
            f"backend; the {backend} backend runs its own"
        )
