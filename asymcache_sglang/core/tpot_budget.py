"""The default TPOT budget of a prefill chunk that shares its forward with running decodes."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asymcache_sglang.core.latency_fit import BatchFeatures


class DecodeStepTracker:
    """EMA of decode-only step times, and the default TPOT budget of a step that adds a chunk.

    The budget is 2x the decode step plus the fixed cost of an extend step (c5, which any chunk
    pays however small): the chunk's own work may then double the decodes' step. Without the
    fixed cost the budget can be below any extend step, and every chunk falls to the minimum.
    """

    def __init__(self, factor: float = 2.0, ema: float = 0.1) -> None:
        if factor < 1.0:
            raise ValueError(f"budget factor must be >= 1 (a decode step itself), got {factor}")
        if not 0.0 < ema <= 1.0:
            raise ValueError(f"EMA weight must be in (0, 1], got {ema}")
        self.factor = factor
        self.ema = ema
        self.step_s: float | None = None

    def observe(self, features: BatchFeatures, seconds: float) -> None:
        """Record one timed step; only decode-only steps (decodes, no new tokens) count."""
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"step time must be finite and > 0, got {seconds}")
        if features.new_tokens > 0 or features.decode_reqs == 0:
            return
        if self.step_s is None:
            self.step_s = seconds
        else:
            self.step_s += self.ema * (seconds - self.step_s)

    def budget_s(self, extend_fixed_s: float = 0.0) -> float | None:
        """factor x the decode-step EMA + ``extend_fixed_s``; None until a decode step was seen."""
        return None if self.step_s is None else self.factor * self.step_s + extend_fixed_s
