"""Eviction priority: reuse probability x position-aware recompute cost per token.

Keys are kept time-invariant so a lazy heap stays valid: with P(reuse) = exp(-idle / tau),
log(P * cost) = log(cost) + last_access / tau - now / tau, and the last term is shared by all nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class CostModel(Protocol):
    """What eviction needs of a cost model: the per-token recompute latency of a range."""

    def cost_per_token(self, start: int, end: int) -> float: ...


@dataclass(frozen=True)
class StaticCostModel:
    """Recompute latency of one token at position p: a + b * p (seconds, any unit works)."""

    a: float = 1.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.a <= 0 or self.b < 0:
            raise ValueError(f"cost model needs a > 0 and b >= 0, got a={self.a}, b={self.b}")

    def cost_per_token(self, start: int, end: int) -> float:
        """Mean per-token cost of recomputing positions [start, end)."""
        return self.a + self.b * (start + end - 1) / 2.0


class ReuseEstimator:
    """Online estimate of the reuse horizon tau from observed gaps between hits of a node."""

    def __init__(self, initial_tau_s: float, share_boost: float = 0.0, ema: float = 0.1) -> None:
        if initial_tau_s <= 0:
            raise ValueError(f"reuse horizon must be > 0, got {initial_tau_s}")
        self.tau_s = initial_tau_s
        self.share_boost = share_boost
        self.ema = ema
        self.observed_gaps = 0

    def observe_gap(self, gap_s: float) -> None:
        """Record the idle time a node had when it was hit again."""
        if gap_s <= 0:
            return
        self.observed_gaps += 1
        self.tau_s = (1 - self.ema) * self.tau_s + self.ema * gap_s

    def log_boost(self, num_children: int) -> float:
        """Shared prefixes (several branches below) are more likely to be reused."""
        if self.share_boost <= 0 or num_children <= 1:
            return 0.0
        return math.log1p(self.share_boost * (num_children - 1))


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
