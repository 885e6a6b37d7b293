"""What every TP rank's AsymCache decisions read, agreed on: rank 0's latency view and clock.

With ``--tp-size`` > 1 the scheduler of each rank calls ``on_pass`` once per scheduling pass,
at the same point (``Scheduler._get_new_batch_prefill_raw``'s hook). Every
``LATENCY_SYNC_EVERY`` passes one broadcast on SGLang's TP CPU group carries rank 0's published
latency fit and clock reading, which every rank adopts; in between the pass clock ticks. The
tree's eviction keys, reuse and return estimates then read the same time on every rank, and the
chunk and the recompute cost the same fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from asymcache_sglang.core.latency_fit import LatencyView
from asymcache_sglang.core.pass_clock import ClockReading, PassClock
from asymcache_sglang.latency_runtime import LatencyRuntime

# Scheduling passes between broadcasts of rank 0's state.
LATENCY_SYNC_EVERY = 16


@dataclass(frozen=True)
class RankZeroState:
    """One broadcast: rank 0's latency view and clock reading."""

    view: LatencyView
    clock: ClockReading


class TpAgreement:
    """The agreed latency view and clock of one TP rank's scheduler."""

    def __init__(self, latency: LatencyRuntime, clock: PassClock) -> None:
        self.latency = latency
        self.clock = clock
        self.passes = 0

    def on_pass(self, broadcast: Callable[[RankZeroState], RankZeroState]) -> None:
        """One scheduling pass. ``broadcast`` sends its argument from rank 0 and returns rank
        0's on every rank; it runs once per ``LATENCY_SYNC_EVERY`` passes, a count all share."""
        if self.passes % LATENCY_SYNC_EVERY == 0:
            state = broadcast(RankZeroState(self.latency.local_view(), self.clock.reading()))
            self.latency.publish(state.view)
            self.clock.adopt(state.clock)
        self.passes += 1
        self.clock.tick()
