"""GPU exactness: AsymCache's greedy tokens and logprobs against stock SGLang's own hit/miss spread.

A real bf16 SGLang 0.5.16 server (FlashInfer attention) serves a tiny Llama with really
initialised random weights (``eval.tiny_model``, head_dim 128). One multi-turn workload under a
small KV pool; four servers, one at a time, all on exactly the same inputs:

1. stock SGLang, radix cache disabled (no plugin loaded): ``run_multi_turn`` grows the
   histories with this server's own answers, so every request is a cache miss -> the reference;
2. stock SGLang radix cache (LRU, no plugin loaded), same pool: ``replay_inputs``; its requests
   with ``cached_tokens > 0`` are stock's own cache-hit-vs-miss pairs;
3. AsymCache with ``--asymcache-msa-impl flashinfer`` and 4. with ``triton``: replayed one request
   at a time, reading AsymCache's counters after each so we know which extends had holes.

Replay keeps the round-robin order, so pool pressure, evictions and holes happen as they would
live. bf16 kernels are not bitwise identical between a contiguous prefill and a split one, and
greedy decoding of a random model flips near-ties, so AsymCache is judged against stock's own
hit-vs-miss spread rather than against identity.

Comparisons (``compare_outputs``): a request matches if its output_ids are identical. Tokens are
compared up to the first divergence: the tokens before it saw the same context, the divergent one
is a flip, everything after it is not comparable. |Δlogprob| is taken over the tokens before the
first divergence (same token, same context).

Verdict (``spread_verdict``, rule in ``VERDICT_RULE``), checked for AsymCache's requests that
reused cache ("reused": cached_tokens > 0 or a hole plan) and for those with a hole plan ("holes"),
each against stock LRU's hit requests (cached_tokens > 0):

* token match rate  >= stock's - max(0.01, 3 pooled standard errors of the difference);
* request match rate >= stock's - max(0.01, 3 pooled standard errors of the difference);
* p99 |Δlogprob| <= max(2 x stock's p99, 2^-5);   max |Δlogprob| <= max(2 x stock's max, 2^-4);
* both sides have >= 64 comparable tokens.

The floors are bf16 resolution: logits come out of the bf16 lm_head, and a top logit of this
model (INIT_STD 0.1) lies in [4, 8), where bf16 values are 2^-5 apart; one rounding step of the
chosen token's logit moves its logprob by up to that much.

GPU host, after ``source .gpu/host_env.sh`` and installing this project into /tmp/site:
``python -m eval.gpu_exactness --msa-impl flashinfer --out $OUT/exactness_flashinfer.json``
(builds the model into a temp dir unless ``--model`` is given; ``--msa-impl`` twice with
``--out-dir`` shares the stock runs), or ``pytest -s -m gpu tests/test_gpu_exactness.py``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asymcache_sglang.core.config import MSA_IMPLS
from eval.common import (
    asymcache_counters,
    result_header,
    server_health,
    summarize_turns,
    summary_stats,
)
from eval.server import SGLangServer, stock_env
from eval.tiny_model import MARKER_NAME, make_tiny_llama
from eval.workloads import MultiTurnWorkload, TurnResult, replay_inputs, run_multi_turn

# head_dim 128: the GPU host's JIT cache holds kernels for head_dim 128 only. 32 query and 8 KV
# heads reproduce the cached Llama-3-8B kernels exactly: GQA group 4 makes FlashInfer decode run
# the cached tensor-core prefill kernel, and 8 x 128 bf16 is the cached 2048-byte KV-store row.
MODEL_KWARGS: dict[str, int] = {
    "seed": 0,
    "vocab_size": 512,
    "hidden_size": 512,
    "num_layers": 4,
    "num_heads": 32,
    "num_kv_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 8192,
}
# 16 sessions x 10 turns = 160 requests; a session grows 64 tokens a turn (16 out + 48 user), so
# the cached working set is ~2.3K tokens after turn 0 and ~11.5K after turn 9. The pool holds all
# of it in turns 1-3 (stock LRU hits whole histories), then AsymCache evicts cheap heads and
# recomputes them as holes. CPU dry run (float32, torch_native): LRU hit 67 requests (1072
# comparable tokens), AsymCache planned holes in 31 requests (turns 4-6, 9980 hole tokens).
WORKLOAD = MultiTurnWorkload(
    num_sessions=16, turns=10, first_prompt_tokens=128, user_tokens_per_turn=48,
    max_new_tokens=16,
)  # fmt: skip
POOL_TOKENS = 6000
MIN_RETAINED_TOKENS = 8

# |Δlogprob| histogram bucket edges: bucket i counts edges[i] <= x < edges[i + 1].
HIST_EDGES: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 5e-2, 1e-1, math.inf)
# Verdict constants (see module docstring).
MIN_RATE_MARGIN = 0.01
SIGMAS = 3.0
SPREAD_FACTOR = 2.0
P99_FLOOR = 2.0**-5
MAX_FLOOR = 2.0**-4
MIN_COMPARABLE_TOKENS = 64
VERDICT_RULE = (
    "For AsymCache's 'reused' requests (cached_tokens > 0 or a hole plan) and, separately, its "
    "'holes' requests (a hole plan), each against stock LRU's 'hit' requests (cached_tokens > 0), "
    "all compared with the no-cache server on the same inputs: "
    f"token_match_rate >= stock - max({MIN_RATE_MARGIN}, {SIGMAS:g} * pooled SE) and "
    f"request_match_rate >= stock - max({MIN_RATE_MARGIN}, {SIGMAS:g} * pooled SE), where "
    "SE = sqrt(p(1-p)(1/n_ours + 1/n_stock)) with p the pooled mismatch rate; "
    f"p99 |dlogprob| <= max({SPREAD_FACTOR:g} * stock p99, 2^-5); "
    f"max |dlogprob| <= max({SPREAD_FACTOR:g} * stock max, 2^-4); "
    f"both sides >= {MIN_COMPARABLE_TOKENS} comparable tokens. |dlogprob| over tokens before the "
    "first divergence; a token match rate counts tokens up to and including the first divergence."
)
# Cumulative AsymCache counters kept per request (deltas around that one request).
PER_REQUEST_COUNTERS = (
    "plans", "planned_hole_tokens", "retained_tokens", "cached_tokens", "adopted_hole_tokens",
    "fallback_plans", "chunk_fallbacks", "first_hole_chunks",
)  # fmt: skip


# ----- pure statistics (CPU-testable) -----


def first_divergence(test: Sequence[int], ref: Sequence[int]) -> int | None:
    """Index of the first output token that differs (or where one output ends); None if equal."""
    for i, (a, b) in enumerate(zip(test, ref)):
        if a != b:
            return i
    return None if len(test) == len(ref) else min(len(test), len(ref))


def abs_logprob_diffs(test: TurnResult, ref: TurnResult) -> list[float]:
    """|Δlogprob| of the output tokens before the first divergence (same token, same context)."""
    div = first_divergence(test.output_ids, ref.output_ids)
    n = len(ref.output_ids) if div is None else div
    n = min(n, len(test.output_logprobs), len(ref.output_logprobs))
    return [abs(test.output_logprobs[i] - ref.output_logprobs[i]) for i in range(n)]


def histogram(values: Sequence[float], edges: Sequence[float] = HIST_EDGES) -> list[dict]:
    """Counts per bucket [lo, hi); ``hi`` is None for an unbounded top bucket (JSON has no inf)."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        i = bisect.bisect_right(edges, v) - 1
        if 0 <= i < len(counts):
            counts[i] += 1
    return [
        {"lo": lo, "hi": None if math.isinf(hi) else hi, "count": c}
        for lo, hi, c in zip(edges[:-1], edges[1:], counts)
    ]


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """max, mean, nearest-rank p50/p90/p99, exact zeros, a histogram; statistics None if empty."""
    xs = sorted(values)
    stats: dict[str, Any] = {"count": len(xs), "exact_zero": sum(x == 0 for x in xs)}
    stats.update(summary_stats(xs) if xs else dict.fromkeys(("max", "mean", "p50", "p90", "p99")))
    stats["histogram"] = histogram(xs)
    return stats


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def compare_outputs(
    test: Sequence[TurnResult],
    ref: Sequence[TurnResult],
    select: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """Greedy-token match and |Δlogprob| of ``test`` against ``ref`` (same inputs, same order).

    ``select`` keeps only the request pairs where it is True. Counted per request: identical
    output_ids; tokens before the first divergence (matched with the same context); one
    divergence if any. token_match_rate = matched / (matched + divergences): each of those
    tokens had the same context on both sides, tokens after a divergence did not.
    """
    if len(test) != len(ref) or (select is not None and len(select) != len(ref)):
        raise ValueError("compare_outputs needs runs (and a selection) of the same length")
    pairs = []
    for i, (t, r) in enumerate(zip(test, ref)):
        if t.input_ids != r.input_ids:
            raise ValueError(f"request {i} (session {r.session}, turn {r.turn}): inputs differ")
        if select is None or select[i]:
            pairs.append((t, r))
    identical = matched = divergences = output_tokens = 0
    diffs: list[float] = []
    diverged = []
    for t, r in pairs:
        div = first_divergence(t.output_ids, r.output_ids)
        output_tokens += len(r.output_ids)
        if div is None:
            identical += 1
            matched += len(r.output_ids)
        else:
            divergences += 1
            matched += div
            diverged.append([r.session, r.turn, div])
        diffs.extend(abs_logprob_diffs(t, r))
    return {
        "requests": len(pairs),
        "identical_requests": identical,
        "request_match_rate": _ratio(identical, len(pairs)),
        "output_tokens": output_tokens,
        "tokens_before_divergence": matched,
        "divergences": divergences,
        "comparable_tokens": matched + divergences,
        "token_match_rate": _ratio(matched, matched + divergences),
        "prefix_token_fraction": _ratio(matched, output_tokens),
        "abs_dlogprob": distribution(diffs),
        # [session, turn, index of the first divergent output token]
        "diverged": diverged,
    }


def _rate_check(ours_ok: int, ours_n: int, stock_ok: int, stock_n: int) -> dict[str, Any]:
    """Ours' success rate may trail stock's by max(MIN_RATE_MARGIN, SIGMAS pooled SEs)."""
    if not ours_n or not stock_n:
        return {"ours": None, "stock": None, "margin": None, "ok": False}
    ours, stock = ours_ok / ours_n, stock_ok / stock_n
    p = (ours_n - ours_ok + stock_n - stock_ok) / (ours_n + stock_n)
    se = math.sqrt(p * (1 - p) * (1 / ours_n + 1 / stock_n))
    margin = max(MIN_RATE_MARGIN, SIGMAS * se)
    return {"ours": ours, "stock": stock, "margin": margin, "ok": ours >= stock - margin}


def _spread_check(ours: float | None, stock: float | None, floor: float) -> dict[str, Any]:
    if ours is None or stock is None:
        return {"ours": ours, "stock": stock, "limit": None, "ok": False}
    limit = max(SPREAD_FACTOR * stock, floor)
    return {"ours": ours, "stock": stock, "limit": limit, "ok": ours <= limit}


def spread_verdict(ours: dict[str, Any], stock: dict[str, Any]) -> dict[str, Any]:
    """Is one ``compare_outputs`` result of ours within stock's hit-vs-miss spread?"""
    ours_d, stock_d = ours["abs_dlogprob"], stock["abs_dlogprob"]
    checks = {
        "enough_data": {
            "ours": ours["comparable_tokens"],
            "stock": stock["comparable_tokens"],
            "min": MIN_COMPARABLE_TOKENS,
            "ok": min(ours["comparable_tokens"], stock["comparable_tokens"])
            >= MIN_COMPARABLE_TOKENS,
        },
        "token_match_rate": _rate_check(
            ours["tokens_before_divergence"], ours["comparable_tokens"],
            stock["tokens_before_divergence"], stock["comparable_tokens"],
        ),
        "request_match_rate": _rate_check(
            ours["identical_requests"], ours["requests"],
            stock["identical_requests"], stock["requests"],
        ),
        "p99_abs_dlogprob": _spread_check(ours_d["p99"], stock_d["p99"], P99_FLOOR),
        "max_abs_dlogprob": _spread_check(ours_d["max"], stock_d["max"], MAX_FLOOR),
    }  # fmt: skip
    return {"holds": all(c["ok"] for c in checks.values()), "checks": checks}


def request_masks(lru: Sequence[TurnResult], ours: Sequence[TurnResult]) -> dict[str, list[bool]]:
    """Subsets: stock 'hit' (cached_tokens > 0); ours 'holes' (a hole plan) and 'reused'."""
    holes = [r.meta.get("asymcache", {}).get("plans", 0) > 0 for r in ours]
    return {
        "hit": [r.cached_tokens > 0 for r in lru],
        "holes": holes,
        "reused": [r.cached_tokens > 0 or h for r, h in zip(ours, holes)],
    }


def exactness_comparisons(
    no_cache: Sequence[TurnResult], lru: Sequence[TurnResult], ours: Sequence[TurnResult]
) -> dict[str, Any]:
    """All comparisons against the no-cache reference, and the verdict."""
    masks = request_masks(lru, ours)
    stock_hit = compare_outputs(lru, no_cache, masks["hit"])
    ours_cmp = {
        "all": compare_outputs(ours, no_cache),
        "reused": compare_outputs(ours, no_cache, masks["reused"]),
        "holes": compare_outputs(ours, no_cache, masks["holes"]),
    }
    per_subset = {name: spread_verdict(ours_cmp[name], stock_hit) for name in ("reused", "holes")}
    return {
        "asymcache_vs_no_cache": ours_cmp,
        "lru_vs_no_cache": {"all": compare_outputs(lru, no_cache), "hit": stock_hit},
        "verdict": {
            "rule": VERDICT_RULE,
            "ours_within_stock_spread": all(v["holds"] for v in per_subset.values()),
            **per_subset,
        },
    }


def per_request_rows(
    no_cache: Sequence[TurnResult], lru: Sequence[TurnResult], ours: Sequence[TurnResult]
) -> list[dict[str, Any]]:
    """One compact row per request, for reading a failed verdict."""
    rows = []
    for ref, stock, mine in zip(no_cache, lru, ours):
        diffs_lru, diffs_ours = abs_logprob_diffs(stock, ref), abs_logprob_diffs(mine, ref)
        counters = mine.meta.get("asymcache", {})
        rows.append(
            {
                "session": ref.session,
                "turn": ref.turn,
                "prompt_tokens": len(ref.input_ids),
                "lru_cached": stock.cached_tokens,
                "asym_cached": mine.cached_tokens,
                "asym_hole_tokens": counters.get("planned_hole_tokens", 0),
                "lru_first_divergence": first_divergence(stock.output_ids, ref.output_ids),
                "asym_first_divergence": first_divergence(mine.output_ids, ref.output_ids),
                "lru_max_abs_dlogprob": max(diffs_lru, default=None),
                "asym_max_abs_dlogprob": max(diffs_ours, default=None),
            }
        )
    return rows


# ----- servers -----


def exactness_server_args(
    pool_tokens: int, attention_backend: str = "flashinfer", page_size: int = 1
) -> list[str]:
    """Flags shared by all servers of one comparison: bf16, real weights, bounded KV pool; CUDA
    graphs at SGLang's defaults."""
    paged = ["--page-size", str(page_size)] if page_size > 1 else []
    return paged + [
        "--dtype", "bfloat16",
        "--attention-backend", attention_backend,
        "--skip-tokenizer-init",
        "--grammar-backend", "none",
        "--cuda-graph-max-bs-decode", "8",
        "--max-total-tokens", str(pool_tokens),
    ]  # fmt: skip


def asymcache_flags(msa_impl: str | None) -> list[str]:
    """AsymCache's flags; ``msa_impl`` None leaves the kernel to the backend (CPU dry runs)."""
    flags = [
        "--enable-asymcache",
        "--asymcache-min-retained-tokens", str(MIN_RETAINED_TOKENS),
    ]  # fmt: skip
    return flags + ([] if msa_impl is None else ["--asymcache-msa-impl", msa_impl])


@dataclass
class ReferenceRuns:
    """The two stock runs every AsymCache run is compared with (independent of msa_impl)."""

    no_cache: list[TurnResult]
    lru: list[TurnResult]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    server_args: dict[str, list[str]] = field(default_factory=dict)


def _run_info(results: list[TurnResult], wall_s: float, server: SGLangServer) -> dict[str, Any]:
    return {**summarize_turns(results), "wall_s": wall_s, **server_health(server)}


def run_reference(
    model_dir: str | Path,
    log_dir: Path,
    *,
    workload: MultiTurnWorkload = WORKLOAD,
    base_args: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
) -> ReferenceRuns:
    """No-cache server grows the histories (every request a miss); stock LRU replays them."""
    base = list(base_args) if base_args is not None else exactness_server_args(POOL_TOKENS)
    no_cache_args = [*base, "--disable-radix-cache"]
    runs: dict[str, dict[str, Any]] = {}
    with SGLangServer(
        model_dir, extra_args=no_cache_args, env=stock_env(env),
        log_path=log_dir / "no_cache.log", timeout_s=600,
    ) as server:  # fmt: skip
        start = time.perf_counter()
        no_cache = run_multi_turn(server.url, workload)
        runs["no_cache"] = _run_info(no_cache, time.perf_counter() - start, server)
    with SGLangServer(
        model_dir, extra_args=base, env=stock_env(env),
        log_path=log_dir / "lru.log", timeout_s=600,
    ) as server:  # fmt: skip
        start = time.perf_counter()
        lru = replay_inputs(server.url, no_cache, workload.max_new_tokens)
        runs["lru"] = _run_info(lru, time.perf_counter() - start, server)
    return ReferenceRuns(no_cache, lru, runs, {"no_cache": no_cache_args, "lru": base})


def replay_with_counters(
    url: str, reference: Sequence[TurnResult], max_new_tokens: int
) -> list[TurnResult]:
    """``replay_inputs`` one request at a time; AsymCache's counter deltas go to meta['asymcache'].

    Requests are sequential, so the delta around one request is exactly that request's extend.
    """
    out = []
    before = asymcache_counters(url)
    for ref in reference:
        (res,) = replay_inputs(url, [ref], max_new_tokens)
        after = asymcache_counters(url)
        res.meta["asymcache"] = {
            k: after.get(k, 0) - before.get(k, 0) for k in PER_REQUEST_COUNTERS
        }
        before = after
        out.append(res)
    return out


def run_asymcache(
    model_dir: str | Path,
    reference: ReferenceRuns,
    msa_impl: str | None,
    log_dir: Path,
    *,
    max_new_tokens: int = WORKLOAD.max_new_tokens,
    base_args: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[list[TurnResult], dict[str, Any], list[str]]:
    """Replay the reference inputs on an AsymCache server; results, run info and its flags."""
    base = list(base_args) if base_args is not None else exactness_server_args(POOL_TOKENS)
    args = [*base, *asymcache_flags(msa_impl)]
    with SGLangServer(
        model_dir, extra_args=args, env=env,
        log_path=log_dir / f"asymcache_{msa_impl or 'default'}.log", timeout_s=600,
    ) as server:  # fmt: skip
        start = time.perf_counter()
        ours = replay_with_counters(server.url, reference.no_cache, max_new_tokens)
        wall_s = time.perf_counter() - start
        counters = asymcache_counters(server.url)
        info = {**_run_info(ours, wall_s, server), "counters": counters}
    return ours, info, args


def _model_config(model_dir: Path) -> dict[str, Any]:
    """How the model was built (make_tiny_llama's marker) and its HF config."""
    marker, config = model_dir / MARKER_NAME, model_dir / "config.json"
    return {
        "path": str(model_dir),
        "served_dtype": "bfloat16",
        "build": json.loads(marker.read_text()) if marker.is_file() else None,
        "config": json.loads(config.read_text()) if config.is_file() else None,
    }


def run_exactness(
    model_dir: str | Path,
    msa_impl: str | None,
    log_dir: Path,
    *,
    workload: MultiTurnWorkload = WORKLOAD,
    pool_tokens: int = POOL_TOKENS,
    reference: ReferenceRuns | None = None,
    base_args: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """AsymCache (``msa_impl``) vs no-cache, next to stock LRU vs no-cache; one JSON-able dict.

    ``reference`` (from ``run_reference`` with the same workload and pool) is reused when given,
    so several msa_impls share one pair of stock runs. ``base_args``/``env`` override the GPU
    flags (CPU dry runs only).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    base = list(base_args) if base_args is not None else exactness_server_args(pool_tokens)
    if reference is None:
        reference = run_reference(model_dir, log_dir, workload=workload, base_args=base, env=env)
    ours, ours_info, ours_args = run_asymcache(
        model_dir, reference, msa_impl, log_dir,
        max_new_tokens=workload.max_new_tokens, base_args=base, env=env,
    )  # fmt: skip
    comparisons = exactness_comparisons(reference.no_cache, reference.lru, ours)
    return {
        **result_header(),
        "msa_impl": msa_impl,
        "model": _model_config(Path(model_dir)),
        "server_args": {"asymcache": ours_args, **reference.server_args},
        "workload": asdict(workload),
        "pool_tokens": pool_tokens,
        "runs": {**reference.runs, "asymcache": ours_info},
        "verdict": comparisons.pop("verdict"),
        "comparisons": comparisons,
        "per_request": per_request_rows(reference.no_cache, reference.lru, ours),
    }


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth printing."""
    ours = result["comparisons"]["asymcache_vs_no_cache"]
    stock = result["comparisons"]["lru_vs_no_cache"]["hit"]

    def short(c: dict[str, Any]) -> dict[str, Any]:
        d = c["abs_dlogprob"]
        keys = ("requests", "request_match_rate", "comparable_tokens", "token_match_rate")
        return {**{k: c[k] for k in keys}, "p99": d["p99"], "max": d["max"]}

    counters = result["runs"]["asymcache"]["counters"]
    return {
        "card": result["card"],
        "msa_impl": result["msa_impl"],
        "counters": {
            k: counters.get(k)
            for k in ("plans", "planned_hole_tokens", "adopted_hole_tokens", "cached_tokens")
        },
        "ours": {k: short(v) for k, v in ours.items()},
        "stock_hit": short(stock),
        "ours_within_stock_spread": result["verdict"]["ours_within_stock_spread"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="tiny-model folder (default: build one)")
    parser.add_argument(
        "--msa-impl", action="append", choices=MSA_IMPLS,
        help="repeat for several; they share one pair of stock runs (default: flashinfer)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="result JSON (one --msa-impl only)")
    parser.add_argument("--out-dir", type=Path, help="writes exactness_<impl>.json per impl")
    parser.add_argument("--pool-tokens", type=int, default=POOL_TOKENS)
    parser.add_argument(
        "--attention-backend", default="flashinfer", choices=("flashinfer", "triton"),
        help="for every server; --msa-impl applies to flashinfer only",
    )  # fmt: skip
    parser.add_argument("--page-size", type=int, default=1, help="for every server")
    args = parser.parse_args()
    flashinfer = args.attention_backend == "flashinfer"
    if args.msa_impl and not flashinfer:
        parser.error("--msa-impl chooses the kernel on the flashinfer backend only")
    impls = (args.msa_impl or ["flashinfer"]) if flashinfer else [None]
    if (args.out is None) == (args.out_dir is None) or (args.out and len(impls) > 1):
        parser.error("give --out with one --msa-impl, or --out-dir")
    out_dir = args.out_dir if args.out_dir is not None else args.out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="asymcache-exactness-") as tmp:
        model = args.model or make_tiny_llama(Path(tmp) / "tiny-llama-hd128", **MODEL_KWARGS)
        base = exactness_server_args(args.pool_tokens, args.attention_backend, args.page_size)
        reference = run_reference(model, out_dir, base_args=base)
        for impl in impls:
            result = run_exactness(
                model, impl, out_dir, pool_tokens=args.pool_tokens, reference=reference,
                base_args=base,
            )  # fmt: skip
            label = impl or f"{args.attention_backend}_backend"
            out = args.out if args.out is not None else out_dir / f"exactness_{label}.json"
            out.write_text(json.dumps(result, indent=1))
            print(json.dumps(headline(result), indent=1))


if __name__ == "__main__":
    main()
