"""CPU demo: stock SGLang radix (LRU) vs AsymCache on the same multi-turn workload under a small
KV pool. Prints TTFT, token hit rate, retained and recomputed tokens, and whether outputs match.

CPU timings on a shared 2-core machine are noisy; the demo shows the mechanism, not a benchmark.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from eval.common import asymcache_counters, summary_stats
from eval.server import SGLangServer, cpu_env, cpu_server_args, stock_cpu_env
from eval.tiny_model import make_tiny_llama
from eval.workloads import MultiTurnWorkload, TurnResult, replay_inputs, run_multi_turn


def _row(name: str, results: list[TurnResult], holes: int | str, match: str) -> list[str]:
    ttft = summary_stats(r.ttft_s * 1000 for r in results)
    prompt = sum(len(r.input_ids) for r in results)
    cached = sum(r.cached_tokens for r in results)
    return [
        name,
        f"{ttft['mean']:.0f}",
        f"{ttft['p50']:.0f}",
        f"{ttft['p90']:.0f}",
        f"{cached / prompt:.1%}",
        str(cached),
        str(prompt - cached),
        str(holes),
        match,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "asymcache")
    parser.add_argument("--max-total-tokens", type=int, default=1200)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()

    model = make_tiny_llama(args.workdir / "tiny-llama", seed=0)
    workload = MultiTurnWorkload(num_sessions=args.sessions, turns=args.turns)
    pool = ["--max-total-tokens", str(args.max_total_tokens)]
    asym_args = cpu_server_args() + pool + ["--enable-asymcache"]
    print(f"AsymCache server (KV pool {args.max_total_tokens} tokens) ...", flush=True)
    with SGLangServer(
        model, extra_args=asym_args, env=cpu_env(), log_path=args.workdir / "demo-asymcache.log"
    ) as server:
        ours = run_multi_turn(server.url, workload)
        counters = asymcache_counters(server.url)
    print("Stock SGLang radix cache (LRU), same inputs ...", flush=True)
    with SGLangServer(
        model,
        extra_args=cpu_server_args() + pool,
        env=stock_cpu_env(),
        log_path=args.workdir / "demo-lru.log",
    ) as server:
        lru = replay_inputs(server.url, ours, workload.max_new_tokens)

    same = sum(a.output_ids == b.output_ids for a, b in zip(ours, lru))
    header = [
        "cache",
        "TTFT mean ms",
        "p50",
        "p90",
        "token hit rate",
        "retained",
        "computed",
        "holes recomputed",
        "outputs match LRU",
    ]
    rows = [
        _row("lru", lru, "-", "-"),
        _row("asymcache", ours, counters["planned_hole_tokens"], f"{same}/{len(ours)}"),
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print(
        f"requests: {len(ours)}; interior evictions: {counters['interior_evicted_tokens']} "
        f"tokens; hole plans: {counters['plans']}"
    )


if __name__ == "__main__":
    main()
