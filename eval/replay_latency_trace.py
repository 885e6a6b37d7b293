"""Replay recorded step timings through the current latency model, offline.

A server started with ``ASYMCACHE_LATENCY_TRACE`` writes one JSON line per timed forward: its
features, the measured seconds, and what the server's model predicted before it. Replaying the
lines through ``OnlineLatencyModel`` scores this checkout's model on the same GPU steps, beside the
score of the predictions as served. It is open loop: the steps are the ones the serving model's
chunk decisions produced, so it measures prediction, not the TPOT or TTFT a new policy would get.

``python -m eval.replay_latency_trace eval/results/traces/*.jsonl.gz --out OUT.json``
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

from asymcache_sglang.latency_model import BatchFeatures, HeldOutScore, OnlineLatencyModel
from eval.gpu_pressure import git_commit


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The trace's records; ``.gz`` files are decompressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def replay(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out scores of the predictions as served and of this checkout's model.

    Both skip the model's first ``min_samples`` steps, as the server's own score does.
    """
    model = OnlineLatencyModel()
    as_served = HeldOutScore()
    for record in records:
        features = BatchFeatures(
            record["new_tokens"], record["new_ctx"], record["decode_reqs"], record["decode_ctx"]
        )
        if model.samples >= model.min_samples:
            as_served.add(record["predicted"], record["seconds"], prefill=features.new_tokens > 0)
        model.update(features, record["seconds"])
    return {
        "steps": len(records),
        "as_served": as_served.state(),
        "replayed": model.held_out.state(),
        "replayed_peak_prefill_tokens_per_s": model.peak_prefill_tokens_per_s,
        "replayed_coefficients": model.coefficients,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, help="write the scores as JSON here")
    args = parser.parse_args()
    result = {
        "replay_commit": git_commit(),
        "traces": {path.name: replay(read_trace(path)) for path in args.traces},
    }
    for name, scores in result["traces"].items():
        served, replayed = scores["as_served"], scores["replayed"]
        print(
            f"{name}: held-out R^2 as served {served['r2']:.3f}, replayed {replayed['r2']:.3f}; "
            f"prefill-step error {served['prefill_mean_abs_pct_error']:.1f}% -> "
            f"{replayed['prefill_mean_abs_pct_error']:.1f}%"
        )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
