"""``--enable-asymcache`` and the ``--asymcache-*`` knobs, as a subclass of SGLang's ServerArgs.

The plugin REPLACEs ``sglang.srt.server_args.ServerArgs`` with this class (SGLang 0.5.16), so the
flags appear in ``launch_server --help`` and ``sglang.Engine(..., enable_asymcache=True)``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from sglang.srt.arg_groups.arg_utils import Arg
from sglang.srt.server_args import ServerArgs

from asymcache_sglang.config import CHUNKING_MODES, MSA_IMPLS, AsymCacheConfig

_DEFAULTS = AsymCacheConfig()

SUPPORTED_BACKENDS = ("flashinfer", "triton", "torch_native")


class AsymCacheArgsError(ValueError):
    """A flag combination AsymCache cannot honour."""


@dataclasses.dataclass
class AsymCacheServerArgs(ServerArgs):
    enable_asymcache: Annotated[
        bool,
        "Enable AsymCache: a cost-aware, hole-aware radix prefix cache that evicts cheap prefix "
        "heads before expensive tails and recomputes the holes in one multi-segment extend.",
    ] = False
    asymcache_max_holes: Annotated[
        int,
        "AsymCache: most holes one request may recompute in one extend; past it the rest of the "
        "path is recomputed contiguously. 0 turns holes off: cost-aware, leaf-only eviction.",
    ] = _DEFAULTS.max_holes
    asymcache_min_retained_tokens: Annotated[
        int,
        "AsymCache: smallest retained segment after a hole worth reusing; shorter islands are "
        "recomputed with the holes around them.",
    ] = _DEFAULTS.min_retained_tokens
    asymcache_cost_a: Annotated[
        float,
        "AsymCache static cost model: recompute cost of one token at position p is a + b*p; "
        "this is a (relative units, > 0).",
    ] = _DEFAULTS.cost_a
    asymcache_cost_b: Annotated[
        float,
        "AsymCache static cost model: the per-position slope b of a + b*p (>= 0). "
        "b = 0 makes the cost uniform and eviction plain LRU.",
    ] = _DEFAULTS.cost_b
    asymcache_reuse_horizon_s: Annotated[
        float,
        "AsymCache: initial reuse horizon tau in seconds, P(reuse) = exp(-idle/tau); "
        "refined online from observed reuse gaps.",
    ] = _DEFAULTS.reuse_horizon_s
    asymcache_share_boost: Annotated[
        float,
        "AsymCache: reuse-probability boost per extra branch below a shared prefix (>= 0).",
    ] = _DEFAULTS.share_boost
    asymcache_msa_impl: Annotated[
        str | None,
        Arg(
            help=(
                "AsymCache: the kernel that runs multi-segment extends on the flashinfer attention "
                "backend. 'flashinfer': FlashInfer paged prefill, one causal sub-request per "
                "segment. 'triton': AsymCache's own Triton MSA kernel, one launch for all "
                "segments. Unset: flashinfer there; the triton and torch_native backends always "
                "plan their own kernel per sub-request."
            ),
            choices=list(MSA_IMPLS),
        ),
    ] = None
    asymcache_chunking: Annotated[
        str,
        Arg(
            help=(
                "AsymCache: 'adaptive' sets each pass's prefill chunk from an online "
                "kernel-latency model (the largest chunk within the TPOT budget while decodes "
                "run, else the throughput knee; never above --chunked-prefill-size), after a "
                "short latency profile at start-up. 'static' keeps SGLang's fixed chunk; the "
                "default (on an H100 adaptive cut the longest decode stall but cost TTFT). With "
                "--tp-size > 1 every rank uses TP rank 0's fit."
            ),
            choices=list(CHUNKING_MODES),
        ),
    ] = _DEFAULTS.chunking
    asymcache_tpot_budget_ms: Annotated[
        float | None,
        "AsymCache adaptive chunking: the step time a prefill chunk may take while decodes share "
        "its forward (--enable-mixed-chunk) (ms). Default: 2x the measured decode step plus the "
        "measured fixed cost of an extend step.",
    ] = _DEFAULTS.tpot_budget_ms
    asymcache_latency_min_r2: Annotated[
        float,
        "AsymCache: held-out R^2 the online latency model must reach before it replaces the "
        "static costs and drives chunking (0..1).",
    ] = _DEFAULTS.latency_min_r2

    def __post_init__(self) -> None:
        if self.enable_asymcache:
            self._apply_asymcache_defaults()
        super().__post_init__()

    def _apply_asymcache_defaults(self) -> None:
        refuse = [
            (self.disable_radix_cache, "--disable-radix-cache"),
            (self.enable_hierarchical_cache, "--enable-hierarchical-cache"),
            (self.speculative_algorithm is not None, "--speculative-algorithm"),
            (self.enable_dp_attention, "--enable-dp-attention"),
            (self.pp_size > 1, "--pp-size > 1"),
            (self.page_size not in (None, 1), "--page-size > 1 (page_size 1 only for now)"),
            (self.enable_lmcache, "--enable-lmcache"),
            (self.enable_flexkv, "--enable-flexkv"),
            (self.enable_session_radix_cache, "--enable-session-radix-cache"),
            (self.enable_streaming_session, "--enable-streaming-session"),
            (self.kv_events_config is not None, "--kv-events-config"),
            (self.dllm_algorithm is not None, "--dllm-algorithm"),
            (self.radix_cache_backend not in (None, "asymcache"), "--radix-cache-backend"),
        ]
        for bad, flag in refuse:
            if bad:
                raise AsymCacheArgsError(f"--enable-asymcache cannot be combined with {flag}")
        if self.asymcache_max_holes < 0:
            raise AsymCacheArgsError("--asymcache-max-holes must be >= 0")
        if self.asymcache_min_retained_tokens < 1:
            raise AsymCacheArgsError("--asymcache-min-retained-tokens must be >= 1")
        if self.asymcache_cost_a <= 0 or self.asymcache_cost_b < 0:
            raise AsymCacheArgsError("--asymcache-cost-a must be > 0 and --asymcache-cost-b >= 0")
        if self.asymcache_reuse_horizon_s <= 0:
            raise AsymCacheArgsError("--asymcache-reuse-horizon-s must be > 0")
        if self.asymcache_share_boost < 0:
            raise AsymCacheArgsError("--asymcache-share-boost must be >= 0")
        if self.asymcache_tpot_budget_ms is not None and not self.asymcache_tpot_budget_ms > 0:
            raise AsymCacheArgsError("--asymcache-tpot-budget-ms must be > 0")
        if not 0.0 <= self.asymcache_latency_min_r2 <= 1.0:
            raise AsymCacheArgsError("--asymcache-latency-min-r2 must be in [0, 1]")
        self._check_msa_impl()
        self.radix_cache_backend = "asymcache"
        if self.attention_backend is None:
            # fa3 is SGLang's Hopper default and has no multi-segment plan.
            self.attention_backend = "torch_native" if self.device == "cpu" else "flashinfer"
        for flag, backend in (
            ("--attention-backend", self.attention_backend),
            ("--prefill-attention-backend", self.prefill_attention_backend),
        ):
            if backend is not None and backend not in SUPPORTED_BACKENDS:
                raise AsymCacheArgsError(
                    f"--enable-asymcache supports {flag} in {SUPPORTED_BACKENDS}, got {backend}"
                )
        if self.enable_deterministic_inference and "triton" in (
            self.attention_backend,
            self.prefill_attention_backend,
        ):
            # The triton backend's deterministic path ignores the sub-request plan.
            raise AsymCacheArgsError(
                "--enable-asymcache cannot be combined with --enable-deterministic-inference "
                "on the triton attention backend"
            )
        if self.asymcache_msa_impl is not None:
            backend = self.prefill_attention_backend or self.attention_backend
            if backend != "flashinfer":
                raise AsymCacheArgsError(
                    f"--asymcache-msa-impl chooses the kernel on the flashinfer attention "
                    f"backend; the {backend} backend runs its own"
                )
        self.page_size = 1
        # Prefill CUDA graphs capture contiguous extends; multi-segment batches are not.
        self.disable_prefill_cuda_graph = True

    def _check_msa_impl(self) -> None:
        # Only the kernel itself is checked here; the backend is checked once it is resolved.
        if self.asymcache_msa_impl == "triton" and self.kv_cache_dtype not in (
            "auto",
            "bfloat16",
            "bf16",
        ):
            raise AsymCacheArgsError(
                "--asymcache-msa-impl triton reads an unquantised KV cache; "
                f"--kv-cache-dtype {self.kv_cache_dtype} is not supported"
            )
