"""Replay recorded step timings through the current latency model, offline.

A server started with ``ASYMCACHE_LATENCY_TRACE`` writes one JSON line per timed forward: its
features, the measured seconds, and what the server's model predicted before it. Replaying the
lines through the server's ``LatencyRuntime`` scores this checkout's model on the same GPU steps,
beside the score of the predictions as served. It is open loop: the steps are the ones the serving
model's chunk decisions produced, so it measures prediction, not the TPOT or TTFT a new policy
would get.

``python -m eval.replay_latency_trace eval/results/traces/*.jsonl.gz --out OUT.json``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asymcache_sglang.core.config import AsymCacheConfig
from asymcache_sglang.core.latency_fit import BatchFeatures
from asymcache_sglang.core.latency_score import HeldOutScore
from asymcache_sglang.latency_runtime import LatencyRuntime
from eval.common import git_commit, open_text


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The trace's records; ``.gz`` files are decompressed."""
    with open_text(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def replay(records: list[dict[str, Any]], max_chunk: int = 8192) -> dict[str, Any]:
    """Held-out scores of the predictions as served and of this checkout's model, and the step
    beside decodes that the served model underpredicted most, with what this model makes of it.

    The records go through the same ``LatencyRuntime`` a TP 1 server feeds. Both scores skip the
    model's first ``min_samples`` steps, as the server's own score does.
    """
    runtime = LatencyRuntime(AsymCacheConfig())
    model = runtime.model
    as_served = HeldOutScore()
    worst: dict[str, Any] | None = None
    for record in records:
        features = BatchFeatures(
            record["new_tokens"], record["new_ctx"], record["decode_reqs"], record["decode_ctx"]
        )
        seconds, served = record["seconds"], record["predicted"]
        if model.samples >= model.min_samples:
            as_served.add(served, seconds, prefill=features.new_tokens > 0)
            beside_decodes = features.new_tokens > 0 and features.decode_reqs > 0
            if beside_decodes and (worst is None or seconds - served > worst["underpredicted_s"]):
                worst = {
                    "new_tokens": features.new_tokens,
                    "decode_reqs": features.decode_reqs,
                    "seconds": seconds,
                    "served_prediction_s": served,
                    "underpredicted_s": seconds - served,
                    "replayed_prediction_s": model.predict(features),
                    **budget_chunk(runtime, features, max_chunk),
                }
        runtime.observe_forward(features, seconds)
    return {
        "steps": len(records),
        "as_served": asdict(as_served.state()),
        "replayed": asdict(model.held_out.state()),
        "replayed_peak_prefill_tokens_per_s": model.peak_prefill_tokens_per_s,
        "replayed_coefficients": model.coefficients,
        "worst_underpredicted_step_beside_decodes": worst,
    }


def budget_chunk(
    runtime: LatencyRuntime, features: BatchFeatures, max_chunk: int
) -> dict[str, Any]:
    """The chunk the default budget rule picks before this step, as a server publishing this
    model would. The trace keeps no per-request lengths: the step is taken as one segment and
    its decodes as equally long."""
    budget_s = runtime.tpot_budget_s()
    if not runtime.view.ready or budget_s is None:
        return {"replayed_budget_s": budget_s, "replayed_chunk": None}
    mean_position = features.new_ctx / features.new_tokens
    decision = runtime.choose_chunk(
        prefix_len=max(0, round(mean_position - features.new_tokens / 2)),
        decode_seq_lens=[features.decode_ctx // features.decode_reqs] * features.decode_reqs,
        max_chunk=max_chunk,
        page_size=1,
    )
    return {"replayed_budget_s": budget_s, "replayed_chunk": decision.chunk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, help="write the scores as JSON here")
    parser.add_argument(
        "--max-chunk", type=int, default=8192, help="the traced servers' --chunked-prefill-size"
    )
    args = parser.parse_args()
    result = {
        "replay_commit": git_commit(),
        "traces": {path.name: replay(read_trace(path), args.max_chunk) for path in args.traces},
    }
    for name, scores in result["traces"].items():
        served, replayed = scores["as_served"], scores["replayed"]
        print(
            f"{name}: held-out R^2 as served {served['r2']:.3f}, replayed {replayed['r2']:.3f}; "
            f"prefill-step error {served['prefill_mean_abs_pct_error']:.1f}% -> "
            f"{replayed['prefill_mean_abs_pct_error']:.1f}%"
        )
        print(f"  worst step beside decodes: {scores['worst_underpredicted_step_beside_decodes']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
