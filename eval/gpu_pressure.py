"""GPU run under KV pressure: stock SGLang radix (LRU) vs AsymCache on the same multi-turn inputs.

Runs on the offline GPU host (``source .gpu/host_env.sh`` first) with a config-only model folder
(``.gpu/make_model.py DIR --preset llama3-8b``) and ``--load-format dummy``. Both servers get the
same flags except AsymCache's; the baseline runs with no plugin loaded. Writes one JSON with the
card, commit, arguments and metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import requests

from eval.server import REPO_ROOT, SGLangServer
from eval.workloads import (
    MultiTurnWorkload,
    TurnResult,
    asymcache_counters,
    replay_inputs,
    run_multi_turn,
)

LEAK_MARKERS = ("memory leak detected", "Traceback", "KV double free", "use-after-free")


def gpu_server_args(attention_backend: str, pool_tokens: int) -> list[str]:
    """Flags shared by both servers; prefill CUDA graphs off for both (AsymCache needs it)."""
    # torch_native attention has no CUDA-graph decode path.
    decode_graph = ["--disable-decode-cuda-graph"] if attention_backend == "torch_native" else []
    return decode_graph + [
        "--load-format", "dummy",
        "--skip-tokenizer-init",
        "--grammar-backend", "none",
        "--attention-backend", attention_backend,
        "--max-total-tokens", str(pool_tokens),
        "--disable-prefill-cuda-graph",
        "--cuda-graph-max-bs-decode", "8",
    ]  # fmt: skip


def summarize(results: list[TurnResult]) -> dict[str, float]:
    ttft = sorted(r.ttft_s for r in results)
    prompt = sum(len(r.input_ids) for r in results)
    cached = sum(r.cached_tokens for r in results)

    def pct(q: float) -> float:
        return ttft[min(len(ttft) - 1, int(q * len(ttft)))]

    return {
        "requests": len(results),
        "ttft_mean_s": statistics.mean(ttft),
        "ttft_p50_s": pct(0.5),
        "ttft_p90_s": pct(0.9),
        "ttft_p99_s": pct(0.99),
        "latency_mean_s": statistics.mean(r.latency_s for r in results),
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "computed_prompt_tokens": prompt - cached,
        "token_hit_rate": cached / prompt,
    }


def server_health(server: SGLangServer) -> dict[str, Any]:
    """Idle the scheduler so SGLang's strict idle memory check runs, then look for trouble."""
    time.sleep(3)
    healthy = requests.get(f"{server.url}/health_generate", timeout=120).status_code == 200
    log = server.log_path.read_text(errors="replace")
    return {
        "healthy_after_idle": healthy,
        "leak_or_error_lines": sum(log.count(m) for m in LEAK_MARKERS),
    }


def git_commit() -> str:
    env_commit = os.environ.get("ASYMCACHE_COMMIT")
    if env_commit:
        return env_commit
    out = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "unknown"


def run_comparison(
    model: str,
    *,
    attention_backend: str,
    pool_tokens: int,
    workload: MultiTurnWorkload,
    log_dir: Path,
    asymcache_args: list[str] | None = None,
) -> dict[str, Any]:
    """AsymCache first (its answers grow the histories), then stock LRU on exactly those inputs."""
    import torch

    base = gpu_server_args(attention_backend, pool_tokens)
    asym_flags = ["--enable-asymcache", *(asymcache_args or [])]
    stock_env = {**os.environ, "SGLANG_PLUGINS": "none"}
    runs: dict[str, Any] = {}
    with SGLangServer(
        model, extra_args=base + asym_flags, log_path=log_dir / "asymcache.log", timeout_s=600
    ) as server:
        ours = run_multi_turn(server.url, workload)
        runs["asymcache"] = {
            **summarize(ours),
            "counters": asymcache_counters(server.url),
            **server_health(server),
        }
    with SGLangServer(
        model, extra_args=base, env=stock_env, log_path=log_dir / "lru.log", timeout_s=600
    ) as server:
        lru = replay_inputs(server.url, ours, workload.max_new_tokens)
        runs["lru"] = {**summarize(lru), **server_health(server)}
    same = sum(a.output_ids == b.output_ids for a, b in zip(ours, lru))
    return {
        "card": torch.cuda.get_device_name(0),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "model": "Llama-3-8B geometry, --load-format dummy",
        "server_args": base,
        "asymcache_args": asym_flags,
        "workload": asdict(workload),
        "runs": runs,
        "greedy_output_match": {"same": same, "total": len(ours)},
        "ratios_lru_over_asymcache": {
            k: runs["lru"][k] / runs["asymcache"][k]
            for k in ("ttft_mean_s", "ttft_p50_s", "ttft_p90_s", "latency_mean_s")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--attention-backend", default="flashinfer")
    parser.add_argument("--pool-tokens", type=int, default=24000)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--turns", type=int, default=13)
    parser.add_argument("--first-prompt-tokens", type=int, default=1024)
    parser.add_argument("--user-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--asymcache-arg", action="append", default=[])
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
        workload=workload,
        log_dir=args.out.parent,
        asymcache_args=args.asymcache_arg,
    )
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("card", "runs", "greedy_output_match")}, indent=1))


if __name__ == "__main__":
    main()
