"""``--enable-asymcache`` and the ``--asymcache-*`` knobs, as a subclass of SGLang's ServerArgs.

The plugin REPLACEs ``sglang.srt.server_args.ServerArgs`` with this class (SGLang 0.5.16), so the
flags appear in ``launch_server --help`` and ``sglang.Engine(..., enable_asymcache=True)``. The
checks live in ``AsymCacheConfig``; this class only declares the flags and applies what they imply.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from sglang.srt.arg_groups.arg_utils import Arg
from sglang.srt.server_args import ServerArgs

from asymcache_sglang.core.config import (
    CHUNKING_MODES,
    HOLDS_MODES,
    MSA_IMPLS,
    AsymCacheConfig,
    attention_backend,
)

_DEFAULTS = AsymCacheConfig()


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
                "short latency profile at start-up. 'static' keeps SGLang's fixed chunk (the "
                "default). With --tp-size > 1 every rank uses TP rank 0's fit."
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
    asymcache_holds: Annotated[
        str,
        Arg(
            help=(
                "AsymCache: 'on' holds, softly, the KV of a program (a request's session_id, or "
                "the conversation whose last request its prompt begins with) until it is "
                "expected back, learned from the return gaps seen; a held program's cheap head "
                "is evicted before its tail, and /close_session releases it. 'off': the cost "
                "key alone."
            ),
            choices=list(HOLDS_MODES),
        ),
    ] = _DEFAULTS.holds

    def __post_init__(self) -> None:
        if self.enable_asymcache:
            self._apply_asymcache()
        super().__post_init__()

    def _apply_asymcache(self) -> None:
        """Refuse what AsymCache cannot run (AsymCacheArgsError), then set what it needs."""
        AsymCacheConfig.from_server_args(self)
        self.radix_cache_backend = "asymcache"
        self.attention_backend = attention_backend(self)
        self.page_size = self.page_size or 1


def asymcache_enabled(args: object) -> bool:
    """The guard of hooks outside the scheduler (HTTP server, tokenizer manager): whether these
    server arguments turn AsymCache on."""
    return isinstance(args, AsymCacheServerArgs) and args.enable_asymcache
