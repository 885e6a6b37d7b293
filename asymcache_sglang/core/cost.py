"""Eviction priority: reuse probability x position-aware recompute cost per token.

Keys are kept time-invariant so a lazy heap stays valid: with P(reuse) = exp(-idle / tau),
log(P * cost) = log(cost) + last_access / tau - now / tau, and the last term is shared by all nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from asymcache_sglang.core.latency_fit import LatencyView
from asymcache_sglang.core.reuse import ReuseEstimator


class CostModel(Protocol):
    """What eviction needs of a cost model: the per-token recompute latency of a range."""

    def cost_per_token(self, start: int, end: int) -> float: ...


@dataclass(frozen=True)
class StaticCostModel:
    """Recompute latency of one token at position p: a + b * p (a > 0, b >= 0; any unit)."""

    a: float = 1.0
    b: float = 0.0

    def cost_per_token(self, start: int, end: int) -> float:
        """Mean per-token cost of recomputing positions [start, end)."""
        return self.a + self.b * (start + end - 1) / 2.0


class LatencyCostModel:
    """Recompute cost per token from the published latency fit, with StaticCostModel's interface.

    Evicted KV comes back in extends of up to a chunk of ``recompute_chunk_tokens`` (SGLang's
    --chunked-prefill-size), so a token at position p costs fixed / chunk + c1 + c2 * p: the
    extend step's fixed cost amortised over the chunk, the per-token layers, and attention over
    the p keys before it, all from the extend cost model. Eviction orders nodes by log(cost), so
    only the cost's shape matters: it is given in units of the static model's per-token cost at
    position 0 (``fallback.a``). Static keys and model keys in the same heap (it keys a node when
    it is pushed) are then commensurate, before and after the model becomes ready. Until the
    extend fit is ready, or while it has no per-token cost, the static fallback is used.
    """

    def __init__(self, fallback: StaticCostModel, recompute_chunk_tokens: int) -> None:
        if recompute_chunk_tokens < 1:
            raise ValueError(f"recompute chunk must be >= 1 token, got {recompute_chunk_tokens}")
        self.fallback = fallback
        self.recompute_chunk_tokens = recompute_chunk_tokens
        self.view = LatencyView()

    def cost_per_token(self, start: int, end: int) -> float:
        """fallback.a * cost at the mean position of [start, end) / cost at position 0."""
        if self.view.extend_ready:
            fixed, c1, c2 = self.view.extend_coefficients
            at_zero = fixed / self.recompute_chunk_tokens + c1
            if at_zero > 0:
                return self.fallback.a * (1.0 + c2 / at_zero * (start + end - 1) / 2.0)
        return self.fallback.cost_per_token(start, end)


def eviction_key(
    cost: CostModel,
    reuse: ReuseEstimator,
    tau_s: float,
    start: int,
    end: int,
    last_access: float,
    num_children: int,
) -> float:
    """log(P(reuse) * dT / tokens), up to a constant shared by all nodes; smallest goes first."""
    return (
        math.log(cost.cost_per_token(start, end))
        + reuse.log_boost(num_children)
        + last_access / tau_s
    )
