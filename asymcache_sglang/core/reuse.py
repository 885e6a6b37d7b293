"""Reuse probability of a cached node, estimated online from observed reuse gaps."""

from __future__ import annotations

import math


class ReuseEstimator:
    """P(reuse) = exp(-idle / tau), with tau an EMA of the gaps between hits of a node.

    A memoryless estimate: it ranks nodes exactly as recency does.
    """

    def __init__(self, initial_tau_s: float, share_boost: float = 0.0, ema: float = 0.1) -> None:
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
