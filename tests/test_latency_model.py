"""Unit tests for the online step-latency model, its cost adapter and the decode-step tracker.

Timings are synthetic: a known linear model with H100/8B-like magnitudes, times (1 + 3% noise).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from asymcache_sglang.core.cost import LatencyCostModel, StaticCostModel
from asymcache_sglang.core.latency_fit import (
    BatchFeatures,
    LatencyView,
    OnlineLatencyModel,
    extend_cost_model,
)
from asymcache_sglang.core.latency_score import HeldOutScore, ScoreSums, WindowScore
from asymcache_sglang.core.tpot_budget import DecodeStepTracker

# c0 launch, c1 per new token, c2 per prefill (query, key) pair, c3 per decode request, c4 per
# decode key, c5 per extend step: each term is several ms somewhere in the sampled batches.
TRUTH = (5e-3, 6e-5, 1e-9, 2e-5, 4e-8, 3e-3)
NOISE = 0.03
DECODE_STEP = BatchFeatures(0, 0.0, 8, 4000)


def random_batch(rng: np.random.Generator, kind: str | None = None) -> BatchFeatures:
    """Prefill-only, decode-only or mixed; each decode batch has its own context scale so the
    per-request and per-key decode terms are not collinear."""
    kind = kind or str(rng.choice(["prefill", "decode", "mixed"]))
    segments, decodes = [], []
    if kind != "decode":
        for start, new in zip(
            rng.integers(0, 16385, 3), rng.integers(64, 4097, rng.integers(1, 4))
        ):
            segments.append((int(start), int(start + new)))
    if kind != "prefill":
        mean_ctx = int(rng.integers(64, 8193))
        num = int(rng.integers(1, 257))
        decodes = rng.integers(mean_ctx // 2, mean_ctx * 3 // 2 + 1, num).tolist()
    return BatchFeatures.from_segments(segments, decodes)


def true_seconds(features: BatchFeatures, coefs=TRUTH) -> float:
    return sum(c * v for c, v in zip(coefs, features.vector()))


def measured(features: BatchFeatures, rng: np.random.Generator, coefs=TRUTH) -> float:
    return true_seconds(features, coefs) * (1.0 + rng.normal(0.0, NOISE))


def train(
    model: OnlineLatencyModel, rng: np.random.Generator, n: int, coefs=TRUTH, kind=None
) -> None:
    for _ in range(n):
        features = random_batch(rng, kind)
        model.update(features, measured(features, rng, coefs))


def held_out_fit(
    model: OnlineLatencyModel, rng: np.random.Generator, n: int = 500
) -> tuple[float, float]:
    """(R^2, mean abs % error) on fresh noisy samples."""
    batches = [random_batch(rng) for _ in range(n)]
    actual = np.array([measured(f, rng) for f in batches])
    predicted = np.array([model.predict(f) for f in batches])
    r2 = 1.0 - np.sum((actual - predicted) ** 2) / np.sum((actual - actual.mean()) ** 2)
    return float(r2), float(100.0 * np.mean(np.abs(predicted - actual) / actual))


def rel_errors(model: OnlineLatencyModel, coefs=TRUTH) -> list[float]:
    return [abs(c / t - 1.0) for c, t in zip(model.coefficients, coefs)]


def assert_recovers_truth(model: OnlineLatencyModel, rng: np.random.Generator) -> None:
    """The big terms within 6%, prefill attention within 20%, and a good held-out fit."""
    errors = rel_errors(model)
    assert max(errors[0], errors[1], errors[4]) < 0.06 and errors[2] < 0.20, errors
    r2, mape = held_out_fit(model, rng)
    assert r2 >= 0.98 and mape < 5.0, (r2, mape)


def test_from_segments_by_hand():
    f = BatchFeatures.from_segments([(100, 300), (500, 510)], [7, 1000, 33])
    # 200 * (100 + 300) / 2 + 10 * (500 + 510) / 2 attention pairs.
    assert f == BatchFeatures(new_tokens=210, new_ctx=45050.0, decode_reqs=3, decode_ctx=1040)
    assert f.vector() == (1.0, 210.0, 45050.0, 3.0, 1040.0, 1.0)
    assert BatchFeatures.from_segments([], []).vector() == (1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert BatchFeatures.from_segments([(0, 3)], []).new_ctx == 4.5
    for bad in ([(-1, 4)], [(5, 4)]):
        with pytest.raises(ValueError, match="segment"):
            BatchFeatures.from_segments(bad, [])


def test_recovers_coefficients_and_predicts_held_out():
    rng = np.random.default_rng(0)
    model = OnlineLatencyModel()
    train(model, rng, 2000)
    errors = rel_errors(model)
    # ~100 effective samples (forgetting 0.99) under 3% noise: the big terms are tight, the
    # prefill-attention and per-request terms (a few ms at most) looser. 30 seeds: <= 3.5%, 13%.
    assert max(errors[0], errors[1], errors[4]) < 0.06, errors
    assert max(errors[2], errors[3]) < 0.20, errors
    r2, mape = held_out_fit(model, rng)
    assert r2 >= 0.98 and mape < 5.0, (r2, mape)
    assert model.r2() >= 0.98 and model.mean_abs_pct_error() < 5.0
    assert model.ready and model.samples == 2000
    state = model.state()
    assert state.coefficients == model.coefficients and state.ready is True
    assert math.isfinite(state.covariance_trace)


def test_fresh_model_predicts_zero_and_is_not_ready():
    model = OnlineLatencyModel()
    assert model.predict(random_batch(np.random.default_rng(1))) == 0.0
    assert model.r2() is None and model.mean_abs_pct_error() is None and not model.ready
    rng = np.random.default_rng(1)
    # The window scores predictions from min_samples = 32 on, and needs min_window = 16 of them.
    train(model, rng, 32 + 15)
    assert model.r2() is None and not model.ready
    train(model, rng, 1)
    assert model.r2() is not None
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="step time"):
            model.update(random_batch(rng), bad)


def test_coefficients_stay_nonnegative_when_truth_has_a_zero():
    truth = (5e-3, 6e-5, 1e-9, 0.0, 4e-8, 3e-3)
    rng = np.random.default_rng(2)
    model = OnlineLatencyModel()
    unconstrained_went_negative = False
    for _ in range(2000):
        features = random_batch(rng)
        model.update(features, measured(features, rng, truth))
        assert min(model.coefficients) >= 0.0
        unconstrained_went_negative |= model._theta_ls[3] < 0  # the constraint did bind
    assert unconstrained_went_negative
    # Within the noise floor of c3 in the other tests (15% of 2e-5).
    assert model.coefficients[3] < 3e-6
    errors = rel_errors(model, (5e-3, 6e-5, 1e-9, 1.0, 4e-8, 3e-3))
    assert max(errors[0], errors[1], errors[4]) < 0.06 and errors[2] < 0.20, errors
    assert model.r2() >= 0.98


def test_forgetting_tracks_a_change():
    rng = np.random.default_rng(3)
    model = OnlineLatencyModel()
    train(model, rng, 1000)
    assert rel_errors(model)[1] < 0.10
    doubled = (TRUTH[0], 2 * TRUTH[1], *TRUTH[2:])
    train(model, rng, 400, doubled)  # 0.99**400: 2% weight left on the old regime
    assert rel_errors(model, doubled)[1] < 0.10, model.coefficients


def test_covariance_guard_bounds_windup_and_keeps_what_was_learned():
    rng = np.random.default_rng(4)
    model = OnlineLatencyModel()
    train(model, rng, 500)
    learned = model.coefficients
    # Without the guard the prefill directions' covariance would grow by 0.99**-5000 ~ 1e22.
    train(model, rng, 5000, kind="decode")
    state = model.state()
    assert state.covariance_trace <= model.covariance_trace_cap
    assert all(math.isfinite(c) for c in model.coefficients)
    assert abs(model.coefficients[1] / learned[1] - 1.0) < 0.05  # prefill terms kept
    train(model, rng, 200)
    assert_recovers_truth(model, rng)


def test_long_decode_only_start_then_prefill_recovers():
    rng = np.random.default_rng(5)
    model = OnlineLatencyModel()
    train(model, rng, 5000, kind="decode")
    assert model.coefficients[1] < 1e-12 and model.coefficients[2] < 1e-15  # never excited
    train(model, rng, 300)
    assert_recovers_truth(model, rng)


def test_flat_decode_window_stays_ready_on_relative_error():
    rng = np.random.default_rng(10)
    model = OnlineLatencyModel()
    train(model, rng, 500)
    assert model.ready
    # 256 steps of one decode batch: the window's times vary by the noise alone, so R^2 says
    # nothing, but the predictions are still within a few percent.
    flat = BatchFeatures(0, 0.0, 32, 32 * 2000)
    for _ in range(300):
        model.update(flat, measured(flat, rng))
    assert model.r2() < 0.5 and model.mean_abs_pct_error() < 5.0
    assert model.ready
    strict = OnlineLatencyModel(max_window_error_pct=0.0)
    train(strict, rng, 500)
    for _ in range(300):
        strict.update(flat, measured(flat, rng))
    assert not strict.ready
    with pytest.raises(ValueError, match="error threshold"):
        OnlineLatencyModel(max_window_error_pct=-1.0)


def test_held_out_score_covers_the_whole_run_by_step_kind():
    rng = np.random.default_rng(11)
    model = OnlineLatencyModel()
    train(model, rng, 32)
    assert model.held_out.state().steps == 0  # warm-up predictions are not scored
    train(model, rng, 400)
    train(model, rng, 100, kind="decode")
    held = model.state().held_out
    assert held.steps == 500 and held.decode_steps >= 100
    assert held.prefill_steps + held.decode_steps == 500
    assert held.r2 >= 0.95 and held.mean_abs_pct_error < 10.0
    assert held.decode_mean_abs_pct_error < 10.0 and held.prefill_mean_abs_pct_error < 10.0
    score = HeldOutScore()
    assert score.state().r2 is None and score.state().mean_abs_pct_error is None
    score.add(1.0, 2.0, prefill=True)
    score.add(2.0, 2.0, prefill=False)
    assert score.state().prefill_mean_abs_pct_error == 50.0
    assert score.state().decode_mean_abs_pct_error == 0.0
    assert score.r2() is None  # actual times flat: no variance to explain


def test_latency_cost_model_uses_static_until_the_extend_fit_is_ready():
    static = StaticCostModel(a=1.0, b=1.0 / 1024)
    model, extend = OnlineLatencyModel(), extend_cost_model()
    steps = DecodeStepTracker()
    cost = LatencyCostModel(static, recompute_chunk_tokens=8192)
    assert cost.cost_per_token(1000, 1100) == static.cost_per_token(1000, 1100)
    rng = np.random.default_rng(8)
    train(extend, rng, 11, kind="prefill")  # 4 warm-up steps and 7 scored: no full window yet
    cost.view = LatencyView.of(model, steps, extend)
    assert not extend.ready and cost.cost_per_token(0, 10) == static.cost_per_token(0, 10)
    train(extend, rng, 100, kind="prefill")
    assert extend.ready and not cost.view.extend_ready  # decisions change only when published
    cost.view = LatencyView.of(model, steps, extend)
    c0, c1, c2, _, _, c5 = extend.coefficients
    assert cost.view.extend_coefficients == (c0 + c5, c1, c2) and not cost.view.ready
    at_zero = (c0 + c5) / 8192 + c1  # the fixed cost of an extend, spread over a chunk
    assert cost.cost_per_token(1000, 1100) == pytest.approx(1.0 + c2 / at_zero * 1049.5)
    # About the truth, relative to position 0: the step's 8 ms over 8,192 tokens, 6e-5 per token,
    # 1e-9 per key: (9.77e-7 + 6e-5 + 1e-9 * 8191.5) / (9.77e-7 + 6e-5) at [8000, 8384).
    assert cost.cost_per_token(8000, 8384) == pytest.approx(1.1343, rel=0.03)
    assert cost.cost_per_token(0, 1) == 1.0
    # The step model alone, however ready, never prices eviction.
    train(model, rng, 300)
    assert model.ready and not LatencyView.of(model, steps, extend_cost_model()).extend_ready


def test_latency_cost_model_never_returns_zero():
    static = StaticCostModel(a=2.0, b=0.0)
    cost = LatencyCostModel(static, recompute_chunk_tokens=8192)
    cost.view = LatencyView(extend_coefficients=(0.0, 0.0, 1e-9), extend_ready=True)
    assert cost.cost_per_token(0, 64) == 2.0
    with pytest.raises(ValueError, match="recompute chunk"):
        LatencyCostModel(static, recompute_chunk_tokens=0)


def calibration_steps(max_prefix: int, chunk: int = 8192) -> list[BatchFeatures]:
    """What the start-up calibration times: its prompt in chunks, then 2,048- and 1,024-token
    extends behind cached prefixes of it (``http_server_wait_and_warmup``)."""
    base = max_prefix + 2048
    chunks = [(s, min(s + chunk, base)) for s in range(0, base, chunk)]
    extends = [(p, p + new) for new in (2048, 1024) for p in range(0, base - new + 1, base // 4)]
    return [BatchFeatures.from_segments([seg], []) for seg in chunks + extends]


def test_extend_fit_keeps_the_position_term_that_decode_traffic_hides():
    """Calibration, then hours of serving at one context length: thousands of decode steps and
    extends whose new * ctx is collinear with new. The extend fit's per-token cost still follows
    position within 5% from 0 to 48K, and eviction reads it."""
    rng = np.random.default_rng(21)
    model, extend, steps = OnlineLatencyModel(), extend_cost_model(), DecodeStepTracker()

    def step(features: BatchFeatures) -> None:
        seconds = measured(features, rng)
        model.update(features, seconds)
        if features.prices_recompute:
            extend.update(features, seconds)

    for features in calibration_steps(48 * 1024):
        step(features)
    for _ in range(40):
        for _ in range(100):
            step(BatchFeatures.from_segments([], rng.integers(24000, 26000, 8).tolist()))
        ctx = int(rng.integers(24000, 26000))
        step(BatchFeatures.from_segments([(ctx, ctx + int(rng.integers(64, 512)))], []))
    assert extend.ready and extend.samples < 100 < model.samples
    cost = LatencyCostModel(StaticCostModel(), recompute_chunk_tokens=2048)
    cost.view = LatencyView.of(model, steps, extend)
    c0, c1, c2, _, _, c5 = TRUTH
    fixed = (c0 + c5) / 2048
    for prefix in (8192, 16384, 32768, 49152):
        true_ratio = (fixed + c1 + c2 * (prefix + 1023.5)) / (fixed + c1 + c2 * 1023.5)
        ratio = cost.cost_per_token(prefix, prefix + 2048) / cost.cost_per_token(0, 2048)
        assert ratio == pytest.approx(true_ratio, rel=0.05), prefix


def test_view_predicts_as_the_model_did_and_carries_the_budget():
    rng = np.random.default_rng(12)
    model = OnlineLatencyModel()
    train(model, rng, 300)
    steps = DecodeStepTracker()
    assert (
        LatencyView.of(model, steps, extend_cost_model()).tpot_budget_s is None
    )  # no decode step seen yet
    steps.observe(DECODE_STEP, 0.007)
    view = LatencyView.of(model, steps, extend_cost_model())
    for _ in range(20):
        features = random_batch(rng)
        assert view.predict(features) == pytest.approx(model.predict(features), rel=1e-9)
    assert view.tpot_budget_s == pytest.approx(0.014 + model.coefficients[5])
    train(model, rng, 50)
    assert view.coefficients != model.coefficients  # a copy: later updates do not leak into it
    assert LatencyView().predict(random_batch(rng)) == 0.0 and not LatencyView().ready


def test_prediction_never_beats_the_peak_prefill_throughput():
    model = OnlineLatencyModel()
    assert model.peak_prefill_tokens_per_s == 0.0
    model.update(BatchFeatures.from_segments([(0, 100)], []), 0.030)  # 3,333 tokens/s
    model.update(BatchFeatures.from_segments([(0, 2000)], [50]), 0.100)  # 20,000 tokens/s
    model.update(BatchFeatures.from_segments([], [50] * 8), 0.001)  # decodes leave the peak be
    assert model.peak_prefill_tokens_per_s == 20000.0
    big = BatchFeatures.from_segments([(0, 6000)], [50] * 8)
    assert model.predict(big) >= 0.3
    view = LatencyView.of(model, DecodeStepTracker(), extend_cost_model())
    assert view.peak_prefill_tokens_per_s == 20000.0 and view.predict(big) == model.predict(big)
    assert model.state().peak_prefill_tokens_per_s == 20000.0
    assert model.predict(BatchFeatures.from_segments([], [50])) >= 0.0  # no bound without tokens
    before = model.predict(big)
    assert model.update(big, 0.35) == before  # update returns the prediction it scored


def test_decode_step_tracker_budget():
    tracker = DecodeStepTracker()
    assert tracker.budget_s() is None
    tracker.observe(DECODE_STEP, 0.010)
    assert tracker.budget_s() == pytest.approx(0.020)
    tracker.observe(DECODE_STEP, 0.020)  # 0.010 + 0.1 * (0.020 - 0.010)
    assert tracker.step_s == pytest.approx(0.011)
    tracker.observe(BatchFeatures.from_segments([(0, 64)], [100] * 8), 0.050)  # a mixed step
    tracker.observe(BatchFeatures(0, 0.0, 0, 0), 0.050)  # an empty one
    assert tracker.step_s == pytest.approx(0.011)  # neither is a decode step
    assert tracker.budget_s() == pytest.approx(0.022)
    assert tracker.budget_s(extend_fixed_s=0.014) == pytest.approx(0.036)
    assert DecodeStepTracker(factor=1.5).factor == 1.5
    with pytest.raises(ValueError, match="factor"):
        DecodeStepTracker(factor=0.5)
    with pytest.raises(ValueError, match="step time"):
        tracker.observe(DECODE_STEP, 0.0)


def test_window_score_matches_a_direct_computation():
    rng = np.random.default_rng(13)
    window = WindowScore(64)
    pairs = []
    for _ in range(1000):  # many evictions and rebuilds
        actual = float(rng.uniform(0.005, 0.2))
        predicted = actual * float(1 + rng.normal(0, 0.1))
        window.add(predicted, actual)
        pairs.append((predicted, actual))
    predicted, actual = np.array(pairs[-64:]).T
    r2 = 1 - np.sum((actual - predicted) ** 2) / np.sum((actual - actual.mean()) ** 2)
    assert len(window) == 64
    assert window.sums.r2() == pytest.approx(r2, rel=1e-9)
    mape = 100 * np.mean(np.abs(predicted - actual) / actual)
    assert window.sums.mean_abs_pct_error() == pytest.approx(mape, rel=1e-9)
    flat = ScoreSums()
    for _ in range(10):
        flat.add(0.0071, 0.007)
    assert flat.r2() is None and flat.mean_abs_pct_error() == pytest.approx(100 * 0.0001 / 0.007)


def test_extend_fit_stays_ready_through_a_poor_window():
    rng = np.random.default_rng(5)
    extend, step_model = extend_cost_model(), OnlineLatencyModel(min_samples=4, min_window=8)
    for model in (extend, step_model):
        train(model, rng, 40, kind="prefill")
        assert model.ready
        # Steps the linear form cannot fit (times off by 2x either way): the window goes bad.
        for i in range(16):
            features = random_batch(rng, "prefill")
            model.update(features, true_seconds(features) * (2.0 if i % 2 else 0.5))
    assert extend.ready and not step_model.ready
    assert not BatchFeatures.from_segments([(0, 1023)], []).prices_recompute
    assert not BatchFeatures.from_segments([(0, 4096)], [100]).prices_recompute
    assert BatchFeatures.from_segments([(0, 1024)], []).prices_recompute
