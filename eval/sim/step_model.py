"""Step latency for the simulator: AsymCache's six-term model, fitted offline to a GPU trace."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from asymcache_sglang.core.latency_fit import BatchFeatures


@dataclass(frozen=True)
class StepModel:
    """Seconds per forward from its features (``BatchFeatures.vector`` order), plus the
    scheduler's host time per step, which CUDA-event times in the trace do not include."""

    coefficients: tuple[float, ...]
    host_overhead_s: float = 0.0

    def step_s(self, features: BatchFeatures) -> float:
        linear = sum(c * x for c, x in zip(self.coefficients, features.vector()))
        return max(0.0, linear) + self.host_overhead_s


def trace_steps(path: Path) -> Iterator[tuple[BatchFeatures, float]]:
    """(features, seconds) of every forward in an AsymCache latency trace (``.jsonl[.gz]``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            features = BatchFeatures(
                row["new_tokens"], row["new_ctx"], row["decode_reqs"], row["decode_ctx"]
            )
            yield features, row["seconds"]


def fit_step_model(path: Path, host_overhead_s: float = 0.0) -> tuple[StepModel, dict[str, float]]:
    """Non-negative least squares of the trace's step times on their features, weighted by
    1 / time so every step counts by its relative error; the model and its fit errors."""
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
    return StepModel(tuple(float(c) for c in coef), host_overhead_s), errors
