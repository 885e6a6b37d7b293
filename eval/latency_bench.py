"""Adaptive against static prefill chunking, and the latency model's fit, on one server each.

Long prefills arrive while other requests decode: static chunking runs each long prompt in
``--chunked-prefill-size`` pieces beside the decodes, adaptive sizes each piece to the TPOT budget.
Every server runs with ``--enable-mixed-chunk`` (decodes share the chunk's forward; without it they
wait for the whole prompt, whatever the chunk) and no request asks for logprobs (SGLang does not
mix those).
Two servers run AsymCache with the same flags except ``--asymcache-chunking``, a third is stock
SGLang 0.5.16 (its radix cache, LRU), all on the same inputs. Reports TPOT and inter-token gaps of
the decoding requests, TTFT of the long prompts, and the model's one-step-ahead R^2 and mean error
as the adaptive server reports them.

GPU host, after ``source .gpu/host_env.sh`` and installing this project into /tmp/site:
``python -m eval.latency_bench --model DIR --out $OUT/latency_bench.json`` with DIR from
``.gpu/make_model.py DIR --preset llama3-8b``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from asymcache_sglang.core.config import LATENCY_TRACE_ENV
from eval.common import (
    asymcache_counters,
    asymcache_latency,
    result_header,
    save_figure,
    server_health,
    summary_stats,
)
from eval.report import grouped_bars
from eval.server import SGLangServer, cpu_env, cpu_server_args, stock_env
from eval.workloads import TurnResult, generate_streaming, inter_token_gaps_s, tpot_s


@dataclass(frozen=True)
class MixedWorkload:
    """``decoders`` requests decode continuously while ``long_prompts`` prefills arrive."""

    decoders: int = 8
    decode_prompt_tokens: int = 256
    decode_tokens: int = 128
    long_prompts: int = 12
    long_prompt_tokens: int = 6000
    gap_s: float = 0.5
    vocab_high: int = 120000
    seed: int = 0


def summarize_mixed(decodes: list[TurnResult], prefills: list[TurnResult]) -> dict[str, float]:
    """TPOT per decoding request, their inter-token gaps (where a long prefill shows as a stall),
    and the long prompts' TTFT."""
    tpot = summary_stats(t for t in map(tpot_s, decodes) if t is not None)
    itl = summary_stats(g for r in decodes for g in inter_token_gaps_s(r))
    ttft = summary_stats(r.ttft_s for r in prefills)
    return {
        "decode_requests": len(decodes),
        "tpot_mean_s": tpot["mean"],
        "tpot_p50_s": tpot["p50"],
        "tpot_p90_s": tpot["p90"],
        "itl_p50_s": itl["p50"],
        "itl_p99_s": itl["p99"],
        "itl_max_s": itl["max"],
        "long_prompt_requests": len(prefills),
        "long_ttft_mean_s": ttft["mean"],
        "long_ttft_p50_s": ttft["p50"],
        "long_ttft_p90_s": ttft["p90"],
    }


def run_mixed(url: str, workload: MixedWorkload) -> tuple[list[TurnResult], list[TurnResult]]:
    """Decoders loop until the last long prompt is answered; prompts are seeded, so both servers
    see the same long prompts (decoders may complete a different number of rounds)."""
    rng = random.Random(workload.seed)
    long_inputs = [
        [rng.randrange(10, workload.vocab_high) for _ in range(workload.long_prompt_tokens)]
        for _ in range(workload.long_prompts)
    ]
    decode_inputs = [
        [rng.randrange(10, workload.vocab_high) for _ in range(workload.decode_prompt_tokens)]
        for _ in range(workload.decoders)
    ]
    done = threading.Event()
    decodes: list[TurnResult] = []
    lock = threading.Lock()

    def decoder(prompt: list[int]) -> None:
        while not done.is_set():
            res = generate_streaming(url, prompt, workload.decode_tokens, return_logprob=False)
            with lock:
                decodes.append(res)

    threads = [threading.Thread(target=decoder, args=(p,), daemon=True) for p in decode_inputs]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # let the decoders reach steady state
    prefills = []
    for prompt in long_inputs:
        prefills.append(generate_streaming(url, prompt, 4, return_logprob=False))
        time.sleep(workload.gap_s)
    done.set()
    for thread in threads:
        thread.join(timeout=600)
    return decodes, prefills


def bench_server_args(
    chunked_prefill_size: int = 8192, max_total_tokens: int = 120000, *, cpu: bool = False
) -> list[str]:
    """The flags every server of the bench shares (dummy weights, mixed chunks, bounded pool)."""
    return [
        "--load-format", "dummy",
        "--skip-tokenizer-init",
        "--grammar-backend", "none",
        "--chunked-prefill-size", str(chunked_prefill_size),
        "--enable-mixed-chunk",
        "--max-total-tokens", str(max_total_tokens),
        # Stock SGLang would take fa3 on Hopper; AsymCache takes flashinfer.
        *(cpu_server_args() if cpu else ["--attention-backend", "flashinfer"]),
    ]  # fmt: skip


def trace_path(log_dir: Path, name: str) -> Path:
    """Where the ``name`` server writes every timed forward (``ASYMCACHE_LATENCY_TRACE``)."""
    return log_dir / f"latency-trace-{name}.jsonl"


def measure_mixed(server: SGLangServer, workload: MixedWorkload) -> dict[str, Any]:
    """Run ``workload`` on ``server``: summary, the latency model, counters and health."""
    decodes, prefills = run_mixed(server.url, workload)
    return {
        **summarize_mixed(decodes, prefills),
        "latency_model": asymcache_latency(server.url),
        "counters": asymcache_counters(server.url),
        **server_health(server),
    }


def run_chunking_comparison(
    model: str,
    *,
    workload: MixedWorkload,
    base_args: list[str],
    log_dir: Path,
    env: dict[str, str] | None = None,
    tpot_budgets_ms: tuple[float, ...] = (),
) -> dict[str, Any]:
    """AsymCache with adaptive chunking (the default TPOT budget, then each of
    ``tpot_budgets_ms``) and with static chunking, and stock SGLang (its radix cache, LRU)."""
    asymcache = [("adaptive", ["--asymcache-chunking", "adaptive"])]
    asymcache += [
        (
            f"adaptive_{budget:g}ms",
            ["--asymcache-chunking", "adaptive", "--asymcache-tpot-budget-ms", f"{budget:g}"],
        )
        for budget in tpot_budgets_ms
    ]
    asymcache.append(("static", ["--asymcache-chunking", "static"]))
    base_env = os.environ if env is None else env
    servers = [
        (
            name,
            ["--enable-asymcache", *flags],
            {**base_env, LATENCY_TRACE_ENV: str(trace_path(log_dir, name))},
        )
        for name, flags in asymcache
    ]
    servers.append(("stock_lru", [], stock_env(env)))
    runs: dict[str, Any] = {}
    for name, flags, server_env in servers:
        log_path = log_dir / f"chunking-{name}.log"
        with SGLangServer(
            model, extra_args=[*base_args, *flags], env=server_env, log_path=log_path, timeout_s=600
        ) as server:
            runs[name] = {"server_flags": flags, **measure_mixed(server, workload)}
    metrics = (
        "tpot_mean_s", "tpot_p90_s", "itl_p50_s", "itl_p99_s", "itl_max_s",
        "long_ttft_mean_s", "long_ttft_p90_s",
    )  # fmt: skip
    adaptive = [name for name in runs if name.startswith("adaptive")]
    return {
        **result_header(),
        "server_args": base_args,
        "workload": asdict(workload),
        "runs": runs,
        # baseline / adaptive: > 1 means adaptive is faster.
        **{
            f"ratios_{name}_over_{a}": {k: run[k] / runs[a][k] for k in metrics}
            for a in adaptive
            for name, run in runs.items()
            if name in ("static", "stock_lru")
        },
    }


PLOT_METRICS = ("tpot_mean_s", "itl_p99_s", "itl_max_s", "long_ttft_mean_s")


def plot(result: dict[str, Any], out: Path) -> None:
    """Each run's TPOT, inter-token gaps and long-prompt TTFT, in ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3))
    labels = ["TPOT mean", "ITL p99", "ITL max", "long TTFT mean"]
    grouped_bars(ax, result["runs"], PLOT_METRICS, labels)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title(f"Adaptive vs static chunking, {result['card']}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chunked-prefill-size", type=int, default=8192)
    parser.add_argument("--max-total-tokens", type=int, default=120000)
    parser.add_argument("--long-prompts", type=int, default=MixedWorkload.long_prompts)
    parser.add_argument("--long-prompt-tokens", type=int, default=MixedWorkload.long_prompt_tokens)
    parser.add_argument("--decoders", type=int, default=MixedWorkload.decoders)
    parser.add_argument("--decode-tokens", type=int, default=MixedWorkload.decode_tokens)
    parser.add_argument("--vocab-high", type=int, default=MixedWorkload.vocab_high)
    parser.add_argument(
        "--tpot-budgets-ms",
        type=float,
        nargs="*",
        default=[],
        help="extra adaptive servers, one per --asymcache-tpot-budget-ms value",
    )
    parser.add_argument("--plot", action="store_true", help="also write OUT with .png")
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the plot of an existing --out JSON"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="dry run on this machine's CPU (times mean nothing)"
    )
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    workload = MixedWorkload(
        decoders=args.decoders,
        long_prompts=args.long_prompts,
        long_prompt_tokens=args.long_prompt_tokens,
        decode_tokens=args.decode_tokens,
        vocab_high=args.vocab_high,
    )
    base = bench_server_args(args.chunked_prefill_size, args.max_total_tokens, cpu=args.cpu)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = run_chunking_comparison(
        args.model,
        workload=workload,
        base_args=base,
        log_dir=args.out.parent,
        env=cpu_env() if args.cpu else None,
        tpot_budgets_ms=tuple(args.tpot_budgets_ms),
    )
    args.out.write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.out.with_suffix(".png"))
    print(
        json.dumps(
            {k: v for k, v in result.items() if k == "card" or k.startswith("ratios")}, indent=1
        )
    )
    for name, run in result["runs"].items():
        print(name, json.dumps({k: v for k, v in run.items() if k != "counters"}, indent=1))


if __name__ == "__main__":
    main()
