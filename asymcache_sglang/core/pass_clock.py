"""The clock eviction reads under tensor parallelism: seconds every TP rank agrees on.

With ``--tp-size`` > 1 each rank runs its own scheduler and prefix tree, and the ranks must evict
the same nodes, or their KV slots part and the collectives hang. Eviction keys and return
estimates read a clock; each rank's wall clock differs. This one is TP rank 0's monotonic clock
as of the last agreement, advanced by rank 0's mean scheduling pass for each pass since: every
rank ticks and adopts at the same passes (SGLang keeps their scheduling identical), so ``now``
is the same on every rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockReading:
    """What rank 0 sends: its clock at the agreement and its mean pass since the one before."""

    at_s: float
    pass_s: float


class PassClock:
    """Seconds from agreed readings and a pass count; never goes back."""

    def __init__(self, wall: Callable[[], float] = time.monotonic) -> None:
        self._wall = wall
        # Zero on every rank until the first agreement, which comes before any tree operation.
        self._at_s = 0.0
        self._pass_s = 0.0
        self._passes = 0
        # This rank's wall clock at the last agreement: what rank 0 measures its passes by.
        self._wall_at_agreement = wall()

    def now(self) -> float:
        return self._at_s + self._passes * self._pass_s

    def tick(self) -> None:
        """One scheduling pass went by."""
        self._passes += 1

    def reading(self) -> ClockReading:
        """This rank's reading to agree on (rank 0's is the one every rank adopts)."""
        wall = self._wall()
        pass_s = (wall - self._wall_at_agreement) / self._passes if self._passes else 0.0
        # An estimate that ran ahead of the wall holds the clock there: it never goes back.
        return ClockReading(max(wall, self.now()), max(pass_s, 0.0))

    def adopt(self, reading: ClockReading) -> None:
        """Rank 0's reading, on every rank at the same pass."""
        self._at_s = max(reading.at_s, self.now())
        self._pass_s = reading.pass_s
        self._passes = 0
        self._wall_at_agreement = self._wall()
