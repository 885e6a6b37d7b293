"""Hit density by idle age, learned online from when cached KV was reused or dropped (LHD).

A cached node's idle age is the time since its last request released it. Each idle period ends
in a hit (a request locks the node again) or in an eviction. From the tokens that ended their
idle period at each age, the expected hits per token-second of residence left for KV idle ``a``
seconds is

    HD(a) = sum_{x >= a} hits(x) / sum_{x >= a} ends(x) * (x - a)

(Beckmann et al., "LHD: Improving Cache Hit Rate by Maximizing Hit Density", NSDI 2018). Where
sessions come back after think or tool times of seconds, HD rises with age until those times
and falls to nothing past them, so KV about to be reused is kept and KV of sessions that ended
goes first; recency ranks the other way round. Ages fall into geometric bins; counts decay so the
estimate follows the workload. Plain Python: the scheduler's cache and the simulator share it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class HitDensityConfig:
    """Bins from ``min_age_s`` to ``max_age_s`` (ages beyond fall in the last), the decay of old
    counts, and how many tokens must have ended an idle period before the estimate is used."""

    min_age_s: float = 0.05
    max_age_s: float = 3600.0
    bins: int = 48
    # Every ``decay_every_tokens`` tokens observed, all counts are multiplied by ``decay``.
    decay_every_tokens: int = 1 << 20
    decay: float = 0.5
    warmup_tokens: int = 1 << 14

    def __post_init__(self) -> None:
        if not 0 < self.min_age_s < self.max_age_s or self.bins < 2:
            raise ValueError(f"need 0 < min_age_s < max_age_s and bins >= 2: {self}")
        if not 0 < self.decay <= 1 or self.decay_every_tokens < 1:
            raise ValueError(f"need 0 < decay <= 1 and decay_every_tokens >= 1: {self}")


class HitDensity:
    """Hits and evictions by idle age, in tokens; ``density(age)`` from them, recomputed lazily."""

    def __init__(self, config: HitDensityConfig | None = None) -> None:
        self.config = config or HitDensityConfig()
        c = self.config
        ratio = (c.max_age_s / c.min_age_s) ** (1 / (c.bins - 1))
        # Bin 0 holds ages below min_age_s; bin i >= 1 starts at min_age_s * ratio**(i - 1).
        self.edges = [0.0] + [c.min_age_s * ratio**i for i in range(c.bins - 1)]
        uppers = self.edges[1:] + [c.max_age_s * ratio]
        self.mids = [(lo + hi) / 2 for lo, hi in zip(self.edges, uppers)]
        self.hits = [0.0] * c.bins
        self.ends = [0.0] * c.bins
        self.observed_tokens = 0.0
        self._since_decay = 0.0
        self._density: list[float] | None = None

    def _bin(self, age_s: float) -> int:
        return bisect.bisect_right(self.edges, max(0.0, age_s)) - 1

    def observe_hit(self, age_s: float, tokens: int) -> None:
        """``tokens`` idle for ``age_s`` were reused."""
        b = self._bin(age_s)
        self.hits[b] += tokens
        self._end(b, tokens)

    def observe_eviction(self, age_s: float, tokens: int) -> None:
        """``tokens`` idle for ``age_s`` were evicted unused."""
        self._end(self._bin(age_s), tokens)

    def _end(self, b: int, tokens: int) -> None:
        self.ends[b] += tokens
        self.observed_tokens += tokens
        self._since_decay += tokens
        self._density = None
        if self._since_decay >= self.config.decay_every_tokens:
            self._since_decay = 0.0
            d = self.config.decay
            self.hits = [h * d for h in self.hits]
            self.ends = [e * d for e in self.ends]

    @property
    def ready(self) -> bool:
        return self.observed_tokens >= self.config.warmup_tokens

    def density(self, age_s: float) -> float | None:
        """Expected hits per token per second of residence for KV idle ``age_s``; 0 past every
        age seen to end; None until ``ready``."""
        if not self.ready:
            return None
        if self._density is None:
            self._density = self._recompute()
        return self._density[self._bin(age_s)]

    def _recompute(self) -> list[float]:
        """Per bin, from suffix sums: hits beyond / (sum ends * mid - age * sum ends) beyond."""
        out = [0.0] * len(self.hits)
        hits = ends = ends_mid = 0.0
        for b in range(len(self.hits) - 1, -1, -1):
            hits += self.hits[b]
            ends += self.ends[b]
            ends_mid += self.ends[b] * self.mids[b]
            residence = ends_mid - self.edges[b] * ends
            out[b] = hits / residence if residence > 0 else 0.0
        return out
