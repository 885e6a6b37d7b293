"""Scores of one-step-ahead latency predictions: a sliding window and the whole run."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class HeldOutState:
    """Run-wide prediction score; errors are mean |predicted - actual| / actual in percent."""

    steps: int
    r2: float | None
    mean_abs_pct_error: float | None
    prefill_steps: int
    prefill_mean_abs_pct_error: float | None
    decode_steps: int
    decode_mean_abs_pct_error: float | None


class ScoreSums:
    """Running sums over (predicted, actual) pairs: R^2 and mean relative error in O(1) per pair.

    The window is rescored on every update, and the model is updated on every forward; rebuilding
    arrays from the window each time cost about as much as the fit itself.
    """

    def __init__(self) -> None:
        self.n = 0
        self._sum_actual = 0.0
        self._sum_actual_sq = 0.0
        self._sum_sq_error = 0.0
        self._sum_pct_error = 0.0

    def add(self, predicted: float, actual: float, sign: int = 1) -> None:
        """Count one pair (``sign`` -1 takes one back out)."""
        self.n += sign
        self._sum_actual += sign * actual
        self._sum_actual_sq += sign * actual * actual
        self._sum_sq_error += sign * (actual - predicted) ** 2
        self._sum_pct_error += sign * 100.0 * abs(predicted - actual) / actual

    def r2(self) -> float | None:
        """None with fewer than 2 pairs or no variance in the actual values."""
        if self.n < 2:
            return None
        ss_tot = self._sum_actual_sq - self._sum_actual**2 / self.n
        if ss_tot <= 1e-12 * self._sum_actual_sq:  # flat, up to rounding of the sums
            return None
        return 1.0 - self._sum_sq_error / ss_tot

    def mean_abs_pct_error(self) -> float | None:
        return self._sum_pct_error / self.n if self.n else None


class HeldOutScore:
    """Run-wide score of one-step-ahead predictions, split by step kind.

    The sliding window answers "is the fit good now"; this answers "how good was it over the whole
    run", which a benchmark reports, and shows whether decode-only or prefill steps carry the error.
    """

    def __init__(self) -> None:
        self.total = ScoreSums()
        self.by_kind = {"prefill": ScoreSums(), "decode": ScoreSums()}

    @property
    def steps(self) -> int:
        return self.total.n

    def add(self, predicted: float, actual: float, *, prefill: bool) -> None:
        self.total.add(predicted, actual)
        self.by_kind["prefill" if prefill else "decode"].add(predicted, actual)

    def r2(self) -> float | None:
        return self.total.r2()

    def state(self) -> HeldOutState:
        prefill, decode = self.by_kind["prefill"], self.by_kind["decode"]
        return HeldOutState(
            steps=self.steps,
            r2=self.r2(),
            mean_abs_pct_error=self.total.mean_abs_pct_error(),
            prefill_steps=prefill.n,
            prefill_mean_abs_pct_error=prefill.mean_abs_pct_error(),
            decode_steps=decode.n,
            decode_mean_abs_pct_error=decode.mean_abs_pct_error(),
        )


class WindowScore:
    """ScoreSums over the last ``size`` pairs; rebuilt from them every ``size`` pairs so that
    rounding in the add/remove sums cannot build up."""

    def __init__(self, size: int) -> None:
        self.pairs: deque[tuple[float, float]] = deque(maxlen=size)
        self.sums = ScoreSums()
        self._since_rebuild = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, predicted: float, actual: float) -> None:
        if len(self.pairs) == self.pairs.maxlen:
            self.sums.add(*self.pairs[0], sign=-1)
        self.pairs.append((predicted, actual))
        self.sums.add(predicted, actual)
        self._since_rebuild += 1
        if self._since_rebuild >= self.pairs.maxlen:
            self.sums = ScoreSums()
            for pair in self.pairs:
                self.sums.add(*pair)
            self._since_rebuild = 0
