"""Times every forward without blocking the scheduler: CUDA events are polled, never waited on.

On the CPU (CI) the forward is synchronous, so the wall clock around it is its latency.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

import torch

from asymcache_sglang.core.latency_fit import BatchFeatures

T = TypeVar("T")
# (features, seconds, when it was launched on the host's perf_counter clock)
Sample = Callable[[BatchFeatures, float, float], None]


class ForwardTimer:
    """Brackets forwards with events on the current stream; finished ones feed ``on_sample``."""

    def __init__(self, on_sample: Sample, use_cuda: bool) -> None:
        self.on_sample = on_sample
        self.use_cuda = use_cuda
        self._pending: deque[tuple[Any, Any, BatchFeatures, float]] = deque()

    def time(self, features: BatchFeatures, run: Callable[[], T]) -> T:
        """Run one forward, timing it; earlier forwards whose events completed are reported."""
        launched = perf_counter()
        if not self.use_cuda:
            out = run()
            self.on_sample(features, perf_counter() - launched, launched)
            return out
        start_event = torch.cuda.Event(enable_timing=True)
        end_event = torch.cuda.Event(enable_timing=True)
        start_event.record()
        out = run()
        end_event.record()
        self._pending.append((start_event, end_event, features, launched))
        self.poll()
        return out

    def poll(self) -> None:
        """Report every forward whose end event has completed, in launch order."""
        while self._pending and self._pending[0][1].query():
            start_event, end_event, features, launched = self._pending.popleft()
            self.on_sample(features, start_event.elapsed_time(end_event) / 1e3, launched)
