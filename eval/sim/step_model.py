"""Step latency for the simulator: AsymCache's six-term model, fitted offline to a GPU trace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from asymcache_sglang.core.latency_fit import BatchFeatures
from eval.common import open_text


@dataclass(frozen=True)
class StepModel:
    """Seconds per forward from its features (``BatchFeatures.vector`` order), and the
    scheduler's host time per step, which CUDA-event times in the trace do not include: after
    an extend (the first token's sampling and trip out, the next batch's scheduling) and after a
    decode step."""

    coefficients: tuple[float, ...]
    host_extend_s: float = 0.0
    host_decode_s: float = 0.0

    def forward_s(self, features: BatchFeatures) -> float:
        """The forward alone, as the server's CUDA-event timer sees it."""
        return max(0.0, sum(c * x for c, x in zip(self.coefficients, features.vector())))

    def step_s(self, features: BatchFeatures) -> float:
        """The forward and the host's time around it: how far the clock moves."""
        host = self.host_extend_s if features.new_tokens else self.host_decode_s
        return self.forward_s(features) + host


def trace_rows(path: Path) -> Iterator[dict[str, float]]:
    """The rows of an AsymCache latency trace (``.jsonl[.gz]``)."""
    with open_text(path) as f:
        yield from map(json.loads, f)


def trace_steps(path: Path) -> Iterator[tuple[BatchFeatures, float]]:
    """(features, seconds) of every forward in an AsymCache latency trace."""
    for row in trace_rows(path):
        features = BatchFeatures(
            row["new_tokens"], row["new_ctx"], row["decode_reqs"], row["decode_ctx"]
        )
        yield features, row["seconds"]


# A launch gap longer than the forward by more than this is the scheduler idle, not host work.
BUSY_GAP_S = 0.05


def host_time_per_step(path: Path) -> dict[str, float | int] | None:
    """From a trace with launch times: the median of (next launch - this launch - this forward's
    seconds) over forwards the scheduler followed at once with another, extends and decode steps
    apart; None for a trace without launch times (recorded before they were)."""
    rows = list(trace_rows(path))
    if not rows or "launched_s" not in rows[0]:
        return None
    gaps: dict[str, list[float]] = {"extend": [], "decode": []}
    for row, after in zip(rows, rows[1:]):
        host = after["launched_s"] - row["launched_s"] - row["seconds"]
        if host < BUSY_GAP_S:
            gaps["extend" if row["new_tokens"] else "decode"].append(max(0.0, host))
    return {
        **{f"host_{kind}_s": float(np.median(v)) if v else 0.0 for kind, v in gaps.items()},
        **{f"{kind}_gaps": len(v) for kind, v in gaps.items()},
    }


def fit_step_model(path: Path) -> tuple[StepModel, dict[str, float]]:
    """Non-negative least squares of the trace's step times on their features, weighted by
    1 / time so every step counts by its relative error, with the host time per step where the
    trace has launch times; the model and its fit errors."""
    rows = list(trace_steps(path))
    x = np.array([f.vector() for f, _ in rows])
    y = np.array([s for _, s in rows])
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    coef, _ = nnls(x / scale / y[:, None], np.ones_like(y))
    coef = coef / scale
    predicted = x @ coef
    rel = np.abs(predicted - y) / y
    prefill = x[:, 1] > 0
    errors = {
        "steps": len(y),
        "mean_abs_rel_err": float(rel.mean()),
        "prefill_mean_abs_rel_err": float(rel[prefill].mean()) if prefill.any() else None,
        "decode_mean_abs_rel_err": float(rel[~prefill].mean()) if (~prefill).any() else None,
    }
    host = host_time_per_step(path)
    model = StepModel(tuple(float(c) for c in coef))
    if host is not None:
        errors.update(host)
        model = StepModel(model.coefficients, host["host_extend_s"], host["host_decode_s"])
    return model, errors
