"""Online model of forward-step latency, fitted from the scheduler's own step timings.

A step that extends some requests (prefill segments) and decodes others takes about

    t = c0 + c1 * new + c2 * sum(new_i * ctx_i) + c3 * decode_reqs + c4 * sum(decode_ctx)
        + c5 * [new > 0]

seconds: a fixed launch/weight-read cost, linear layers per new token, prefill attention per
(query, key) pair, per-request decode overhead, decode attention per cached key read, and the
extra fixed cost of an extend step: SGLang replays decode-only steps as CUDA graphs but runs
extends eagerly, so an extend of a few tokens costs more than a decode step of as many. All six
coefficients are physically non-negative, which the fit enforces and the chunk policy relies on
(predicted time is then monotone in every feature).

The prediction is also never below new / peak, the step time at the best prefill throughput
(tokens per second) measured so far: a throughput ceiling. The linear form alone extrapolates
badly on a GPU, where a step takes about the larger of its launch time and its compute time, not
their sum: a run of small, launch-bound chunks flattens c1, and the fit alone then badly
underpredicts a large chunk. The start-up profile times the largest chunk, so the ceiling is
measured where it binds.

Eviction reads a second fit of the same form, ``extend_cost_model()``: extend steps alone, with
no forgetting. Fed every step, the one fit learns mostly decode steps (thousands per prefill), and
with every context near one length ``new`` and ``new * ctx`` are collinear, so its c2 (what makes
recompute cost grow with position) drifts to 0. Extend-only data never sees a decode step, and
without forgetting the start-up calibration (extends behind cached prefixes of several lengths)
keeps identifying c2 however collinear the later traffic is.

``OnlineLatencyModel`` is the fit; ``LatencyView`` is the copy of both fits that decisions read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asymcache_sglang.core.latency_score import HeldOutScore, HeldOutState, WindowScore
from asymcache_sglang.core.tpot_budget import DecodeStepTracker

NUM_COEFS = 6
# Regressors are divided by these so that each is O(1..100) on real batches and the covariance
# stays well-conditioned: 1 | new / 1024 tokens | new_ctx / 2**20 pairs | decode_reqs / 128 |
# decode_ctx / 2**17 keys | extend step. Powers of two make scaling and unscaling exact.
REGRESSOR_SCALES = (1.0, 2.0**10, 2.0**20, 2.0**7, 2.0**17, 1.0)
# The coefficients' names, in order (log, /get_server_info and Prometheus labels).
TERMS = ("const", "new_tokens", "new_ctx", "decode_reqs", "decode_ctx", "extend_step")
_EXTEND_STEP_TERM = TERMS.index("extend_step")
# Every non-empty set of coefficients the non-negativity projection may pin to 0, smallest first.
_ZERO_SETS = sorted(
    (
        np.array([mask >> i & 1 for i in range(NUM_COEFS)], dtype=bool)
        for mask in range(1, 1 << NUM_COEFS)
    ),
    key=lambda zero: int(zero.sum()),
)


@dataclass(frozen=True)
class BatchFeatures:
    """The regressors of one forward step."""

    new_tokens: int
    new_ctx: float
    decode_reqs: int
    decode_ctx: int

    @property
    def prices_recompute(self) -> bool:
        """A compute-bound extend step with no decodes in its forward: what the extend cost model
        learns."""
        return self.new_tokens >= EXTEND_FIT_MIN_TOKENS and self.decode_reqs == 0

    def vector(self) -> tuple[float, float, float, float, float, float]:
        """[1, new, new_ctx, decode_reqs, decode_ctx, new > 0], the order of the coefficients."""
        return (
            1.0,
            float(self.new_tokens),
            float(self.new_ctx),
            float(self.decode_reqs),
            float(self.decode_ctx),
            float(self.new_tokens > 0),
        )

    @classmethod
    def from_segments(
        cls, segments: Sequence[tuple[int, int]], decode_seq_lens: Sequence[int]
    ) -> BatchFeatures:
        """Features of a step that computes the prefill positions [start, end) of each segment.

        A plain extend of a request with prefix p and length L is the segment (p, L); AsymCache
        hole recomputes add one segment per hole. Each new token attends the context up to its
        position, so a segment contributes (end - start) * (start + end) / 2 attention pairs.
        """
        new, new_ctx = 0, 0.0
        for start, end in segments:
            if start < 0 or end < start:
                raise ValueError(f"prefill segment needs 0 <= start <= end, got ({start}, {end})")
            new += end - start
            new_ctx += (end - start) * (start + end) / 2.0
        return cls(new, new_ctx, len(decode_seq_lens), int(sum(decode_seq_lens)))


def _scaled(features: BatchFeatures) -> np.ndarray:
    return np.array(features.vector()) / np.array(REGRESSOR_SCALES)


def bounded_step_s(linear_s: float, new_tokens: int, peak_tokens_per_s: float) -> float:
    """The linear prediction, at least 0 and at least ``new_tokens`` at the peak prefill
    throughput (no bound before a peak was measured)."""
    bound_s = new_tokens / peak_tokens_per_s if peak_tokens_per_s > 0 else 0.0
    return max(0.0, linear_s, bound_s)


def _project_nonneg(u: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """argmin over x >= 0 of (x - u)^T cov^-1 (x - u), for a positive definite cov.

    With u the least-squares estimate and cov its covariance, this is the exact non-negative
    least-squares fit of the same data (a plain clip is not, and fed back into the recursion it
    diverges on correlated regressors). Pinning a set Z of coefficients to 0 gives the
    conditional mean x = u - cov[:, Z] m with m = cov[Z, Z]^-1 u[Z]; it is the optimum when x >= 0
    and the multipliers -m are >= 0 (KKT). Z = {u <= 0} is tried first (the usual answer: a
    coefficient whose truth is ~0 dips below), then every Z, smallest first.
    """
    if (u >= 0).all():
        return u.copy()
    feasible = []
    for zero in [u <= 0, *_ZERO_SETS]:
        m = np.linalg.solve(cov[np.ix_(zero, zero)], u[zero])
        x = u - cov[:, zero] @ m
        x[zero] = 0.0  # exactly, not up to rounding
        if (x < 0).any():
            continue
        if (m <= 0).all():
            return x
        feasible.append((float(u[zero] @ m), x))  # the objective at x
    # Only rounding at a degenerate optimum gets here; the best feasible candidate is then it.
    return min(feasible, key=lambda item: item[0])[1]


@dataclass(frozen=True)
class LatencyState:
    """The fit's coefficients and quality, for logs, /get_server_info and metrics."""

    coefficients: tuple[float, ...]
    samples: int
    ready: bool
    # Window score of one-step-ahead predictions; None with too few or flat steps.
    r2: float | None
    mean_abs_pct_error: float | None
    covariance_trace: float
    peak_prefill_tokens_per_s: float
    held_out: HeldOutState


class OnlineLatencyModel:
    """Recursive least squares with exponential forgetting over the six step-time regressors.

    The fit minimises relative error (each sample is weighted by 1 / max(actual, predicted)):
    decode steps of a few ms then count as much as long prefills, and a glitch (a GC pause, a
    late timer) has a weighted error |actual - predicted| / max(actual, predicted) of at most 1,
    so one outlier cannot drag the fit far.

    Wind-up guard: with forgetting factor lam < 1, a direction the data does not excite (no
    prefill during a long decode-only stretch) has its covariance grow by 1 / lam per step. When
    the covariance's trace exceeds ``covariance_trace_cap``, its eigenvalues are clipped to a sixth
    of the cap (one per coefficient), which bounds those directions and leaves the excited ones
    (and what they learned) untouched, where a trace rescale or a reset would discard the latter.
    The slack below the cap makes the decomposition run once per ~100 unexcited steps, not every
    step.

    The recursion runs on the unconstrained estimate; the coefficients used for predictions are
    its projection onto >= 0 in the covariance's metric, i.e. the non-negative fit of the same
    forgetting-weighted data.

    Readiness: the window's R^2 >= ``min_r2``, or its mean relative error is at most
    ``max_window_error_pct``. R^2 alone would drop the model during steady decoding, where the
    window's step times barely vary and R^2 measures noise, just when the next long prompt needs a
    chunk decision. With ``stays_ready`` (a fit without forgetting: it never unlearns what made it
    ready) a later poor window does not take readiness back.
    """

    def __init__(
        self,
        forgetting: float = 0.99,
        window: int = 256,
        min_samples: int = 32,
        min_r2: float = 0.9,
        min_window: int = 16,
        covariance_trace_cap: float = 6.0,
        max_window_error_pct: float = 10.0,
        stays_ready: bool = False,
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting factor must be in (0, 1], got {forgetting}")
        if window < min_window or min_window < 2:
            raise ValueError(f"need window >= min_window >= 2, got {window}, {min_window}")
        if covariance_trace_cap <= 0:
            raise ValueError(f"covariance trace cap must be > 0, got {covariance_trace_cap}")
        if max_window_error_pct < 0:
            raise ValueError(f"error threshold must be >= 0, got {max_window_error_pct}")
        self.forgetting = forgetting
        self.min_samples = min_samples
        self.min_r2 = min_r2
        self.max_window_error_pct = max_window_error_pct
        self.min_window = min_window
        self.stays_ready = stays_ready
        self.covariance_trace_cap = covariance_trace_cap
        self._eig_cap = covariance_trace_cap / NUM_COEFS
        self._theta_ls = np.zeros(NUM_COEFS)
        self._theta = np.zeros(NUM_COEFS)
        # Starting at the eigenvalue cap: a weak prior (weighted regressors are O(10..1000)).
        self._p = self._eig_cap * np.eye(NUM_COEFS)
        self._window = WindowScore(window)
        self._samples = 0
        self._peak_tokens_per_s = 0.0
        self.held_out = HeldOutScore()
        # Refreshed once per update: eviction reads it for every node key it computes.
        self._ready = False

    @property
    def coefficients(self) -> tuple[float, ...]:
        """(c0, ..., c5) in seconds per unit of each regressor."""
        return tuple(float(t / s) for t, s in zip(self._theta, REGRESSOR_SCALES))

    @property
    def samples(self) -> int:
        """Timings absorbed so far."""
        return self._samples

    @property
    def ready(self) -> bool:
        """Whether callers should trust the model over their static fallback."""
        return self._ready

    @property
    def extend_step_s(self) -> float:
        """c5: what an extend step costs beyond a decode step of as many tokens."""
        return self.coefficients[_EXTEND_STEP_TERM]

    @property
    def peak_prefill_tokens_per_s(self) -> float:
        """The best new tokens / step time of any extend step so far (0 before one)."""
        return self._peak_tokens_per_s

    def predict(self, features: BatchFeatures) -> float:
        """Predicted step time in seconds: the linear fit (>= 0, its coefficients and features
        are non-negative), at least the throughput ceiling's time."""
        linear = float(_scaled(features) @ self._theta)
        return bounded_step_s(linear, features.new_tokens, self._peak_tokens_per_s)

    def update(self, features: BatchFeatures, seconds: float) -> float:
        """Absorb one measured step and return what was predicted for it; the prediction is
        scored before the step is absorbed, so the window is held-out."""
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"step time must be finite and > 0, got {seconds}")
        x = _scaled(features)
        linear = float(x @ self._theta)
        predicted = bounded_step_s(linear, features.new_tokens, self._peak_tokens_per_s)
        if self._samples >= self.min_samples:
            # Predictions of a model still warming up say nothing about the fit it converges to.
            self._window.add(predicted, seconds)
            self.held_out.add(predicted, seconds, prefill=features.new_tokens > 0)
        # Weighted by the fit's own prediction: the ceiling bounds predictions, it does not steer
        # the fit (steering it scored worse on recorded GPU traces).
        weight = 1.0 / max(seconds, linear)
        xw = x * weight
        px = self._p @ xw
        gain = px / (self.forgetting + xw @ px)
        self._theta_ls = self._theta_ls + gain * (seconds * weight - xw @ self._theta_ls)
        self._p = (self._p - np.outer(gain, px)) / self.forgetting
        self._bound_covariance()
        self._theta = _project_nonneg(self._theta_ls, self._p)
        if features.new_tokens > 0:
            self._peak_tokens_per_s = max(self._peak_tokens_per_s, features.new_tokens / seconds)
        self._samples += 1
        was_ready = self.stays_ready and self._ready
        self._ready = was_ready or (self._samples >= self.min_samples and self._fit_is_good())
        return predicted

    def _fit_is_good(self) -> bool:
        r2 = self.r2()
        if r2 is not None and r2 >= self.min_r2:
            return True
        error = self.mean_abs_pct_error()
        return error is not None and error <= self.max_window_error_pct

    def r2(self) -> float | None:
        """R^2 of the one-step-ahead predictions in the window; None with too few or flat data."""
        if len(self._window) < self.min_window:
            return None
        return self._window.sums.r2()

    def mean_abs_pct_error(self) -> float | None:
        """Mean |predicted - actual| / actual over the window, in percent; None with too few."""
        if len(self._window) < self.min_window:
            return None
        return self._window.sums.mean_abs_pct_error()

    def state(self) -> LatencyState:
        """Snapshot for logs and metrics."""
        return LatencyState(
            coefficients=self.coefficients,
            samples=self._samples,
            ready=self.ready,
            r2=self.r2(),
            mean_abs_pct_error=self.mean_abs_pct_error(),
            covariance_trace=float(np.trace(self._p)),
            peak_prefill_tokens_per_s=self._peak_tokens_per_s,
            held_out=self.held_out.state(),
        )

    def _bound_covariance(self) -> None:
        self._p = (self._p + self._p.T) / 2.0  # rounding would otherwise make it drift asymmetric
        if np.trace(self._p) > self.covariance_trace_cap:
            eigvals, eigvecs = np.linalg.eigh(self._p)
            self._p = (eigvecs * np.clip(eigvals, 0.0, self._eig_cap)) @ eigvecs.T


# Extends shorter than this are launch- and weight-read-bound (and often replayed as prefill CUDA
# graphs): their step time says little about the compute-bound chunks evicted KV is rebuilt in.
EXTEND_FIT_MIN_TOKENS = 1024


def extend_cost_model(min_r2: float = 0.9) -> OnlineLatencyModel:
    """The fit of pure extend steps of at least ``EXTEND_FIT_MIN_TOKENS`` new tokens
    (``BatchFeatures.prices_recompute``), whose fixed cost, c1 and c2 price eviction.

    No forgetting: the kernels' cost per token and per attention pair does not drift, and what the
    calibration taught about position must outlast any stretch of same-length traffic. Ready once
    its last 8 predictions (each made before its step was absorbed) are good, after at least 4
    steps; the start-up calibration times about 15 such extends. It stays ready.
    """
    return OnlineLatencyModel(
        forgetting=1.0, window=8, min_samples=4, min_window=8, min_r2=min_r2, stays_ready=True
    )


@dataclass(frozen=True)
class LatencyView:
    """The fit that decisions (eviction cost, chunk size) read: a copy, published where it is safe.

    With TP = 1 each update publishes one. With TP > 1 every rank times its own forwards, so rank
    0's copy is broadcast at a scheduling point all ranks share, and until the next one every rank
    decides from the same numbers.
    """

    coefficients: tuple[float, ...] = (0.0,) * NUM_COEFS
    ready: bool = False
    tpot_budget_s: float | None = None
    peak_prefill_tokens_per_s: float = 0.0
    # The extend cost model's (c0 + c5, c1, c2): seconds per extend step, per new token and per
    # attention pair.
    extend_coefficients: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extend_ready: bool = False

    @classmethod
    def of(
        cls,
        model: OnlineLatencyModel,
        decode_steps: DecodeStepTracker,
        extend_model: OnlineLatencyModel,
    ) -> LatencyView:
        """The step model's fit now, with the TPOT budget its decode steps and extend cost give,
        and the extend cost model's fixed and per-token terms."""
        c0, c1, c2, _, _, c5 = extend_model.coefficients
        return cls(
            model.coefficients,
            model.ready,
            decode_steps.budget_s(model.extend_step_s),
            model.peak_prefill_tokens_per_s,
            (c0 + c5, c1, c2),
            extend_model.ready,
        )

    def predict(self, features: BatchFeatures) -> float:
        """Predicted step time in seconds, as ``OnlineLatencyModel.predict`` at publication."""
        linear = sum(c * x for c, x in zip(self.coefficients, features.vector()))
        return bounded_step_s(linear, features.new_tokens, self.peak_prefill_tokens_per_s)
