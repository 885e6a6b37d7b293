"""GPU run under KV pressure: stock SGLang radix (LRU) vs AsymCache on the same multi-turn inputs.

Runs on the offline GPU host (``source .gpu/host_env.sh`` first) with a config-only model folder
(``.gpu/make_model.py DIR --preset llama3-8b``) and ``--load-format dummy``. Both servers get the
same flags except AsymCache's; the baseline runs with no plugin loaded. Writes one JSON with the
card, commit, arguments and metrics.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eval.common import asymcache_counters, result_header, server_health, summarize_turns
from eval.server import SGLangServer, stock_env
from eval.workloads import MultiTurnWorkload, TurnResult, replay_inputs, run_multi_turn


def gpu_server_args(attention_backend: str, pool_tokens: int, page_size: int = 1) -> list[str]:
    """Flags shared by both servers; CUDA graphs at SGLang's defaults."""
    # torch_native attention has no CUDA-graph decode path.
    decode_graph = ["--disable-decode-cuda-graph"] if attention_backend == "torch_native" else []
    paged = ["--page-size", str(page_size)] if page_size > 1 else []
    return decode_graph + paged + [
        "--load-format", "dummy",
        "--skip-tokenizer-init",
        "--grammar-backend", "none",
        "--attention-backend", attention_backend,
        "--max-total-tokens", str(pool_tokens),
        "--cuda-graph-max-bs-decode", "8",
    ]  # fmt: skip


def run_comparison(
    model: str,
    *,
    attention_backend: str,
    pool_tokens: int,
    workload: MultiTurnWorkload,
    log_dir: Path,
    page_size: int = 1,
    variants: dict[str, list[str]],
    baselines: dict[str, list[str]],
) -> dict[str, Any]:
    """Every AsymCache variant and stock SGLang baseline on the same inputs, one server each.

    The first variant runs the multi-turn workload (its answers grow the histories); every other
    server replays exactly those inputs in the same order. Baselines run with no plugin loaded.
    """

    base = gpu_server_args(attention_backend, pool_tokens, page_size)
    servers = [(name, ["--enable-asymcache", *flags], None) for name, flags in variants.items()]
    servers += [(name, flags, stock_env()) for name, flags in baselines.items()]
    runs: dict[str, Any] = {}
    outputs: dict[str, list[TurnResult]] = {}
    for name, flags, env in servers:
        log_path = log_dir / f"{name}.log"
        with SGLangServer(
            model, extra_args=base + flags, env=env, log_path=log_path, timeout_s=600
        ) as server:
            if outputs:
                first = next(iter(outputs.values()))
                outputs[name] = replay_inputs(server.url, first, workload.max_new_tokens)
            else:
                outputs[name] = run_multi_turn(server.url, workload)
            runs[name] = {
                **summarize_turns(outputs[name]),
                "server_flags": flags,
                "counters": asymcache_counters(server.url) if env is None else {},
                **server_health(server),
            }
    first = next(iter(outputs.values()))
    return {
        **result_header(),
        "model": "Llama-3-8B geometry, --load-format dummy",
        "server_args": base,
        "workload": asdict(workload),
        "runs": runs,
        "greedy_output_match": {
            name: {
                "same": sum(a.output_ids == b.output_ids for a, b in zip(first, out)),
                "total": len(first),
            }
            for name, out in outputs.items()
        },
        # baseline / variant: > 1 means the AsymCache variant is faster.
        "ratios": {
            f"{b}/{v}": {
                k: runs[b][k] / runs[v][k]
                for k in ("ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "latency_mean_s")
            }
            for v in variants
            for b in baselines
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--attention-backend", default="flashinfer")
    parser.add_argument("--pool-tokens", type=int, default=24000)
    parser.add_argument("--page-size", type=int, default=1, help="for every server")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--turns", type=int, default=13)
    parser.add_argument("--first-prompt-tokens", type=int, default=1024)
    parser.add_argument("--user-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--msa-impl", action="append", default=[], help="AsymCache variants (default: flashinfer)"
    )
    parser.add_argument(
        "--baseline-policy", action="append", default=[], help="stock policies (default: lru)"
    )
    args = parser.parse_args()
    workload = MultiTurnWorkload(
        num_sessions=args.sessions,
        turns=args.turns,
        first_prompt_tokens=args.first_prompt_tokens,
        user_tokens_per_turn=args.user_tokens,
        vocab_high=120000,
    )
    result = run_comparison(
        args.model,
        attention_backend=args.attention_backend,
        pool_tokens=args.pool_tokens,
        page_size=args.page_size,
        workload=workload,
        log_dir=args.out.parent,
        variants={
            f"asymcache-{impl}": ["--asymcache-msa-impl", impl]
            for impl in args.msa_impl or ["flashinfer"]
        },
        baselines={
            policy: ["--radix-eviction-policy", policy]
            for policy in args.baseline_policy or ["lru"]
        },
    )
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("card", "runs", "greedy_output_match")}, indent=1))


if __name__ == "__main__":
    main()
