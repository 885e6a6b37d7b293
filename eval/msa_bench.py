"""Multi-Segment Attention (MSA) microbenchmark: one request's recompute tokens as n query segments.

Segment ``[s, e)`` of a request of length ``L`` attends causally to KV positions ``[0, e)``; all KV
already sits in a paged pool (page size 1, token-level slots, shuffled). Per segment count and hole
placement it times, on the attention of one layer (Llama-3-8B geometry: 32 q heads, 8 kv heads,
head_dim 128, bf16):

- A: FlashInfer ``BatchPrefillWithPagedKVCacheWrapper`` (fa2, as SGLang), one causal sub-request
  per segment (qo_len ``e - s``, kv_len ``e``);
- B: ``asymcache_sglang.kernels.msa_triton.TritonMSAWrapper`` (best of ``--triton-configs``);
- C: SGLang's ragged path per segment: ragged causal attention of the segment's new tokens among
  themselves + paged non-causal attention over the prefix ``[0, s)``, joined by ``merge_state``;

against ONE contiguous prefill of the same number of query tokens at the end of the same ``L``,
run both as FlashInfer paged (causal) and as SGLang's ragged+paged+merge path; the faster of the
two is the denominator of every ratio. ``work_ratio`` is the segments' causal (query, key) pairs
over the contiguous case's, since holes near the head attend to less KV.

Only ``run`` is timed (SGLang plans once per forward, runs once per layer); ``plan`` is timed
separately. Each measurement cycles through several independent input sets (q, shuffled KV
slots) so L2 cannot hold the working set, and stalls the stream while the CPU queues the timed
calls so Python launch overhead does not show up as GPU idle time. Every implementation is first
checked against a float64 reference on blocks of query rows (start, middle, end of every segment);
one that misses ``rel err <= 1e-2`` is reported and not timed.

Run on the GPU host from the repo root:

    python -m eval.msa_bench --out $OUT/msa_microbench.json [--plot]

Prints a markdown ratio table and a summary; writes JSON (and a PNG with ``--plot``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from asymcache_sglang.kernels.msa_triton import TritonMSAWrapper, reference_msa
from eval.common import result_header, save_figure

NUM_QO_HEADS = 32
NUM_KV_HEADS = 8
HEAD_DIM = 128
DTYPE = torch.bfloat16
SM_SCALE = 1.0 / math.sqrt(HEAD_DIM)
PLACEMENTS = ("head", "middle", "mixed")
IMPLS = ("A", "B", "C")
RATIO_LIMIT = 1.10
TOLERANCE = 1e-2
MIN_ITERS, MAX_ITERS = 10, 100
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "eval" / "results" / "msa_microbench.json"
# Triton configs: "default" (the wrapper's own defaults) or block_m x block_n x num_warps x stages;
# block_m counts query tokens per program (x 4 q heads of one kv head = tile rows).
DEFAULT_TRITON_CONFIGS = "default"


# ---------------------------------------------------------------- pure helpers (CPU-testable)


def _fit(starts: list[int], length: int, limit: int) -> list[int]:
    """Shift hole starts so holes of ``length`` are ordered, disjoint and inside [0, limit)."""
    fitted = list(starts)
    bound = limit
    for i in reversed(range(len(fitted))):
        fitted[i] = min(fitted[i], bound - length)
        bound = fitted[i]
    prev_end = 0
    for i, start in enumerate(fitted):
        fitted[i] = max(start, prev_end)
        prev_end = fitted[i] + length
    return fitted


def segments_for(context: int, q_tokens: int, n: int, placement: str) -> list[tuple[int, int]]:
    """The n query segments ``[s, e)`` of one request: n-1 equal holes plus the tail.

    The tail always ends at ``context`` and takes the remainder of ``q_tokens / n``. Holes:
    ``head`` spreads them with equal gaps over the first 25% (first at 0), ``middle`` centres them
    in equal slots of the middle 50%, ``mixed`` puts the first at 0 and spreads the rest evenly
    up to the tail. Holes that do not fit their region are packed, never overlapping the tail.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if n < 1 or not 0 < q_tokens <= context or q_tokens // n < 1:
        raise ValueError(f"need 1 <= n <= q_tokens <= context, got {n=}, {q_tokens=}, {context=}")
    hole = q_tokens // n
    holes = n - 1
    tail_start = context - (q_tokens - hole * holes)
    if holes == 0:
        return [(tail_start, context)]
    if placement == "head":
        step = (context // 4 - hole) / max(holes - 1, 1)
        starts = [round(i * step) for i in range(holes)]
    elif placement == "middle":
        slot = (context // 2) / holes
        starts = [round(context // 4 + i * slot + (slot - hole) / 2) for i in range(holes)]
    else:
        slot = tail_start / holes
        starts = [round(i * slot) for i in range(holes)]
    starts = _fit(starts, hole, tail_start)
    return [(s, s + hole) for s in starts] + [(tail_start, context)]


def causal_pairs(start: int, end: int) -> int:
    """(query, key) pairs of rows [start, end) attending causally to positions [0, row]."""
    return (end * (end + 1) - start * (start + 1)) // 2


def work_ratio(context: int, segments: Sequence[tuple[int, int]]) -> float:
    """Causal pairs of the segments over those of the same query tokens as one contiguous tail."""
    q_tokens = sum(e - s for s, e in segments)
    return sum(causal_pairs(s, e) for s, e in segments) / causal_pairs(context - q_tokens, context)


def check_blocks(length: int, block: int) -> list[tuple[int, int]]:
    """Row blocks [a, b) of a segment to check: the whole segment, or its start, middle and end."""
    if length <= 3 * block:
        return [(0, length)]
    mid = length // 2 - block // 2
    return [(0, block), (mid, mid + block), (length - block, length)]


def rotation_sets(set_bytes: int, l2_bytes: int, minimum: int, maximum: int = 12) -> int:
    """Input sets to cycle through: at least ``minimum``, and enough to span 4x the L2 cache."""
    return max(minimum, min(maximum, math.ceil(4 * l2_bytes / set_bytes)))


def parse_triton_configs(spec: str) -> list[dict[str, int]]:
    """``"default,16x64x4x3"`` -> ``[{}, {block_m: 16, block_n: 64, num_warps: 4, ...}]``."""
    keys = ("block_m", "block_n", "num_warps", "num_stages")
    configs: list[dict[str, int]] = []
    for item in spec.split(","):
        item = item.strip()
        if item == "default":
            configs.append({})
            continue
        parts = item.split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"bad Triton config {item!r}: want 'default' or BMxBNxWARPSxSTAGES")
        configs.append(dict(zip(keys, map(int, parts))))
    if not configs:
        raise ValueError("no Triton configs given")
    return configs


def config_label(config: dict[str, int]) -> str:
    """Inverse of one :func:`parse_triton_configs` item."""
    if not config:
        return "default"
    return "x".join(str(config[k]) for k in ("block_m", "block_n", "num_warps", "num_stages"))


def _cumsum0(values: Iterable[int]) -> tuple[int, ...]:
    out = [0]
    for v in values:
        out.append(out[-1] + v)
    return tuple(out)


@dataclass(frozen=True)
class HostPlan:
    """Host metadata of ``batch`` copies of one request's segments, request-major.

    ``entries[j] = (request, s, e)`` is sub-request j; its q rows are
    ``[qo_indptr[j], qo_indptr[j+1])``. A's KV of entry j is the request's slots ``[0, e)``
    (``full_indptr``), C's paged prefix is ``[0, s)`` (``prefix_indptr``), and B reads
    ``kv_lens[j]`` slots from ``kv_offsets[j]`` in the flat ``[batch * context]`` slot list.
    """

    entries: tuple[tuple[int, int, int], ...]
    qo_indptr: tuple[int, ...]
    full_indptr: tuple[int, ...]
    prefix_indptr: tuple[int, ...]
    kv_offsets: tuple[int, ...]
    kv_lens: tuple[int, ...]


def host_plan(context: int, segments: Sequence[tuple[int, int]], batch: int) -> HostPlan:
    """Build the :class:`HostPlan` of ``batch`` requests sharing one segment layout."""
    entries = tuple((r, s, e) for r in range(batch) for s, e in segments)
    return HostPlan(
        entries=entries,
        qo_indptr=_cumsum0(e - s for _, s, e in entries),
        full_indptr=_cumsum0(e for _, _, e in entries),
        prefix_indptr=_cumsum0(s for _, s, _ in entries),
        kv_offsets=tuple(r * context for r, _, _ in entries),
        kv_lens=tuple(e for _, _, e in entries),
    )


def slot_indices(
    plan: HostPlan, slots: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A's paged KV indices, C's prefix KV indices, slots of C's new tokens) from [batch, L]."""
    return (
        torch.cat([slots[r, :e] for r, _, e in plan.entries]),
        torch.cat([slots[r, :s] for r, s, _ in plan.entries]),
        torch.cat([slots[r, s:e] for r, s, e in plan.entries]),
    )


@dataclass(frozen=True)
class CheckProblem:
    """Checked q rows as a smaller MSA problem: each row block is a segment ending at its last."""

    rows: tuple[int, ...]
    qo_indptr: tuple[int, ...]
    kv_offsets: tuple[int, ...]
    kv_lens: tuple[int, ...]


def check_problem(plan: HostPlan, block: int) -> CheckProblem:
    """Blocks of rows to compare against the reference, as B-style segments over the same slots."""
    rows: list[int] = []
    sizes: list[int] = []
    offsets: list[int] = []
    lens: list[int] = []
    for j, (_, s, e) in enumerate(plan.entries):
        for a, b in check_blocks(e - s, block):
            rows.extend(range(plan.qo_indptr[j] + a, plan.qo_indptr[j] + b))
            sizes.append(b - a)
            offsets.append(plan.kv_offsets[j])
            # Bottom-right causal: a block's last row sits at position s + b - 1.
            lens.append(s + b)
    return CheckProblem(tuple(rows), _cumsum0(sizes), tuple(offsets), tuple(lens))


@dataclass
class ImplResult:
    """One implementation on one geometry; ``ms``/``plan_ms`` are medians, ``err`` relative."""

    ms: float | None = None
    plan_ms: float | None = None
    err: float | None = None
    failure: str | None = None
    config: str | None = None
    sweep: dict[str, dict[str, Any]] = field(default_factory=dict)


def make_row(
    context: int,
    placement: str,
    segments: Sequence[tuple[int, int]],
    batch: int,
    baseline: dict[str, float | None],
    results: dict[str, ImplResult],
) -> dict[str, Any]:
    """One JSON row; ratios divide by the faster contiguous baseline (paged or ragged)."""
    times = [t for t in baseline.values() if t is not None]
    best = min(times) if times else None
    work = work_ratio(context, segments)
    row: dict[str, Any] = {
        "context": context,
        "segments": len(segments),
        "placement": placement,
        "batch": batch,
        "q_tokens": sum(e - s for s, e in segments),
        "intervals": [list(seg) for seg in segments],
        "work_ratio": work,
        "baseline_ms": {**baseline, "best": best},
        "errors": {},
        "failures": {},
    }
    for impl, res in results.items():
        ratio = res.ms / best if res.ms is not None and best else None
        row[f"{impl}_ms"] = res.ms
        row[f"{impl}_ratio"] = ratio
        row[f"{impl}_ratio_per_work"] = ratio / work if ratio is not None else None
        row[f"{impl}_plan_ms"] = res.plan_ms
        row["errors"][impl] = res.err
        if res.failure:
            row["failures"][impl] = res.failure
        if impl == "B":
            row["B_config"] = res.config
            row["B_sweep"] = res.sweep
    return row


def format_ratio_table(
    rows: Sequence[dict[str, Any]],
    impls: Sequence[str],
    segments: Sequence[int],
    key: str = "ratio",
) -> str:
    """Markdown table: one line per context x placement, one column per impl x segment count."""
    cols = [(impl, n) for impl in impls for n in segments]
    header = ["context", "placement"] + [f"{impl} n={n}" for impl, n in cols]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---:", "---"] + ["---:"] * len(cols)) + "|",
    ]
    cells: dict[tuple[int, str, str, int], Any] = {
        (r["context"], r["placement"], impl, r["segments"]): r.get(f"{impl}_{key}")
        for r in rows
        for impl in impls
    }
    keys = sorted(
        {(r["context"], r["placement"]) for r in rows},
        key=lambda cp: (cp[0], PLACEMENTS.index(cp[1])),
    )
    for context, placement in keys:
        vals = [cells.get((context, placement, impl, n)) for impl, n in cols]
        text = ["—" if v is None else f"{v:.2f}" for v in vals]
        lines.append("| " + " | ".join([str(context), placement, *text]) + " |")
    return "\n".join(lines)


def summarize(
    rows: Sequence[dict[str, Any]], impls: Sequence[str], limit: float = RATIO_LIMIT
) -> dict[str, dict[str, Any]]:
    """Per impl: worst time ratio (and ratio / work ratio) over rows with 2+ segments."""
    summary: dict[str, dict[str, Any]] = {}
    for impl in impls:
        multi = [r for r in rows if r["segments"] >= 2]
        timed = [r for r in multi if r.get(f"{impl}_ratio") is not None]
        worst = max(timed, key=lambda r: r[f"{impl}_ratio"], default=None)
        summary[impl] = {
            "max_ratio": worst[f"{impl}_ratio"] if worst else None,
            "worst_case": (
                f"L={worst['context']} {worst['placement']} n={worst['segments']}"
                if worst
                else None
            ),
            "max_ratio_per_work": max((r[f"{impl}_ratio_per_work"] for r in timed), default=None),
            "untimed_rows": len(multi) - len(timed),
            "ok": bool(worst) and len(timed) == len(multi) and worst[f"{impl}_ratio"] <= limit,
        }
    return summary


# ---------------------------------------------------------------- GPU part


def _i32(values: Sequence[int]) -> torch.Tensor:
    # FlashInfer picks its compiled module by the indptr dtype; SGLang's is int32.
    return torch.tensor(values, dtype=torch.int32)


def _cycles_per_ms() -> float:
    """Calibrate ``torch.cuda._sleep`` (spins on clock64) against CUDA events."""
    torch.cuda._sleep(1000)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(20_000_000)
    end.record()
    end.synchronize()
    return 20_000_000 / start.elapsed_time(end)


def _plan_ms(plan_fn: Callable[[], object], reps: int) -> float:
    """Median host wall time of one plan, synchronised on both sides (plan copies to the GPU)."""
    plan_fn()  # first call may load the JIT module
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        plan_fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _bench_ms(run_fns: Sequence[Callable[[], object]], bench_ms: float, cycles: float) -> float:
    """Median GPU time of one call, cycling through the planned input sets."""
    n = len(run_fns)
    for fn in run_fns:  # first touch of every set (lazy init, Triton compile)
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for fn in run_fns:
        fn()
    cpu_s = (time.perf_counter() - t0) / n
    torch.cuda.synchronize()
    wall_s = (time.perf_counter() - t0) / n
    iters = min(MAX_ITERS, max(MIN_ITERS, int(bench_ms / (wall_s * 1e3))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    # Hold the stream while the CPU queues every timed call: Python wrapper overhead then
    # overlaps GPU work instead of leaving gaps between the events.
    torch.cuda._sleep(int(cycles * min(200.0, 1.5 * iters * cpu_s * 1e3 + 1.0)))
    for i in range(iters):
        starts[i].record()
        run_fns[i % n]()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


@dataclass
class _Data:
    """Per-context inputs: a shuffled KV pool and ``sets`` independent (q, slot list) pairs."""

    context: int
    q_tokens: int
    batch: int
    sets: int
    k: torch.Tensor  # [P, Hkv, D]
    v: torch.Tensor
    slots: torch.Tensor  # [sets, batch, context] int32 pool slots
    q: list[torch.Tensor]  # sets x [batch * q_tokens, Hq, D]


def _run_paged(
    w: Any, q: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor
) -> torch.Tensor:
    return w.run(q, kv, out=out)


def _run_ragged_merge(
    ragged: Any,
    prefix: Any,
    merge_state: Callable,
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    kv: tuple[torch.Tensor, torch.Tensor],
    bufs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    o1, s1, o2, s2 = bufs
    ragged.run(q, k_new, v_new, out=o1, lse=s1, return_lse=True)
    prefix.run(q, kv, out=o2, lse=s2, return_lse=True)
    return merge_state(o1, s1, o2, s2)[0]


class GPUBench:
    """Runs the grid on ``cuda:0``; FlashInfer and the Triton kernel are imported here."""

    def __init__(self, args: argparse.Namespace) -> None:
        import flashinfer
        from flashinfer.cascade import merge_state

        self.args = args
        self.fi = flashinfer
        self.merge_state = merge_state
        self.device = torch.device("cuda", 0)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(args.seed)
        # One float workspace for all wrappers, as SGLang shares one: runs are sequential.
        self.workspace = torch.empty(args.workspace_mb << 20, dtype=torch.uint8, device=self.device)
        self.wrappers: dict[str, list[Any]] = {"paged": [], "ragged": [], "prefix": []}
        self.cycles = _cycles_per_ms()
        self.l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
        self.triton_configs = parse_triton_configs(args.triton_configs)

    def _pool(self, kind: str, n: int) -> list[Any]:
        pool = self.wrappers[kind]
        while len(pool) < n:
            if kind == "ragged":
                # SGLang builds its ragged wrapper with backend "auto" (fa3 on H100).
                w = self.fi.BatchPrefillWithRaggedKVCacheWrapper(
                    self.workspace, "NHD", backend=self.args.ragged_backend
                )
            else:
                w = self.fi.BatchPrefillWithPagedKVCacheWrapper(
                    self.workspace, "NHD", backend="fa2"
                )
            pool.append(w)
        return pool[:n]

    def resolved_backends(self) -> dict[str, str | None]:
        """Backends the wrappers resolved to at plan time ("auto" becomes fa2/fa3)."""
        return {
            kind: getattr(ws[0], "_backend", None) if ws else None
            for kind, ws in self.wrappers.items()
        }

    def make_data(self, context: int, q_tokens: int, batch: int) -> _Data:
        elem = torch.tensor([], dtype=DTYPE).element_size()
        set_bytes = batch * (2 * context * NUM_KV_HEADS + q_tokens * NUM_QO_HEADS) * HEAD_DIM * elem
        sets = rotation_sets(set_bytes, self.l2_bytes, self.args.rotations)
        pool = sets * batch * context
        dev, gen = self.device, self.gen
        k = torch.randn(pool, NUM_KV_HEADS, HEAD_DIM, generator=gen, device=dev, dtype=DTYPE)
        v = torch.randn(pool, NUM_KV_HEADS, HEAD_DIM, generator=gen, device=dev, dtype=DTYPE)
        perm = torch.randperm(pool, generator=gen, device=dev).to(torch.int32)
        q = [
            torch.randn(
                batch * q_tokens, NUM_QO_HEADS, HEAD_DIM, generator=gen, device=dev, dtype=DTYPE
            )
            for _ in range(sets)
        ]
        return _Data(context, q_tokens, batch, sets, k, v, perm.view(sets, batch, context), q)

    def geometry(
        self, data: _Data, segments: Sequence[tuple[int, int]], impls: Iterable[str]
    ) -> dict[str, ImplResult]:
        """Check and time the requested implementations on one segment layout."""
        plan = host_plan(data.context, segments, data.batch)
        idx = [slot_indices(plan, data.slots[r]) for r in range(data.sets)]
        ref = self._reference(data, plan)
        runners = {"A": self._impl_a, "B": self._impl_b, "C": self._impl_c}
        results: dict[str, ImplResult] = {}
        for impl in impls:
            results[impl] = self._guard(
                impl, functools.partial(runners[impl], data, plan, idx, ref)
            )
        return results

    @staticmethod
    def _guard(label: str, fn: Callable[[], ImplResult]) -> ImplResult:
        try:
            res = fn()
        except Exception as exc:  # one broken impl/config must not lose the rest of the grid
            res = ImplResult(failure=f"{type(exc).__name__}: {exc}"[:500])
        if res.failure:
            print(f"    {label} failed: {res.failure}", flush=True)
        return res

    def _reference(self, data: _Data, plan: HostPlan) -> tuple[torch.Tensor, torch.Tensor]:
        cp = check_problem(plan, self.args.check_block)
        rows = torch.tensor(cp.rows, dtype=torch.long, device=self.device)
        args = (
            data.q[0][rows],
            data.k,
            data.v,
            torch.tensor(cp.qo_indptr),
            torch.tensor(cp.kv_offsets),
            torch.tensor(cp.kv_lens),
            data.slots[0].reshape(-1),
            SM_SCALE,
        )
        return rows, reference_msa(*args)

    def _measure(
        self,
        plan_fns: Sequence[Callable[[], object]],
        run_fns: Sequence[Callable[[], torch.Tensor]],
        ref: tuple[torch.Tensor, torch.Tensor],
    ) -> ImplResult:
        plan_ms = _plan_ms(plan_fns[0], self.args.plan_reps)
        for fn in plan_fns[1:]:
            fn()
        rows, expected = ref
        out = run_fns[0]()
        err = ((out[rows].double() - expected).norm() / expected.norm()).item()
        if not err <= TOLERANCE:  # also catches NaN, which is stored as None (JSON has no NaN)
            failure = f"rel err {err:.3e} > {TOLERANCE}"
            return ImplResult(
                plan_ms=plan_ms, err=err if math.isfinite(err) else None, failure=failure
            )
        ms = _bench_ms(run_fns, self.args.bench_ms, self.cycles)
        return ImplResult(ms=ms, plan_ms=plan_ms, err=err)

    def _plan_paged(
        self, w: Any, plan: HostPlan, indptr: tuple[int, ...], indices: torch.Tensor, causal: bool
    ) -> None:
        w.plan(
            qo_indptr=_i32(plan.qo_indptr),
            paged_kv_indptr=_i32(indptr),
            paged_kv_indices=indices,
            paged_kv_last_page_len=torch.ones(len(plan.entries), dtype=torch.int32),
            num_qo_heads=NUM_QO_HEADS,
            num_kv_heads=NUM_KV_HEADS,
            head_dim_qk=HEAD_DIM,
            page_size=1,
            causal=causal,
            sm_scale=SM_SCALE,
            q_data_type=DTYPE,
            kv_data_type=DTYPE,
        )

    def _plan_ragged_merge(
        self, ragged: Any, prefix: Any, plan: HostPlan, indices: torch.Tensor
    ) -> None:
        qo = _i32(plan.qo_indptr)
        ragged.plan(
            qo_indptr=qo,
            kv_indptr=qo,  # each segment's new tokens attend among themselves
            num_qo_heads=NUM_QO_HEADS,
            num_kv_heads=NUM_KV_HEADS,
            head_dim_qk=HEAD_DIM,
            causal=True,
            sm_scale=SM_SCALE,
            q_data_type=DTYPE,
            kv_data_type=DTYPE,
        )
        # Segments starting at 0 get kv_len 0 here, as SGLang's mixed batches do: FlashInfer's
        # paged kernel writes o = 0 and lse = -5e4 for them, which merge_state ignores.
        self._plan_paged(prefix, plan, plan.prefix_indptr, indices, causal=False)

    def _impl_a(self, data: _Data, plan: HostPlan, idx: list, ref: tuple) -> ImplResult:
        ws = self._pool("paged", data.sets)
        out = torch.empty_like(data.q[0])
        kv = (data.k, data.v)
        plan_fns = [
            functools.partial(self._plan_paged, ws[r], plan, plan.full_indptr, idx[r][0], True)
            for r in range(data.sets)
        ]
        run_fns = [
            functools.partial(_run_paged, ws[r], data.q[r], kv, out) for r in range(data.sets)
        ]
        return self._measure(plan_fns, run_fns, ref)

    def _impl_c(self, data: _Data, plan: HostPlan, idx: list, ref: tuple) -> ImplResult:
        ragged = self._pool("ragged", data.sets)
        prefix = self._pool("prefix", data.sets)
        rows = data.q[0].shape[0]
        lse = functools.partial(
            torch.empty, rows, NUM_QO_HEADS, dtype=torch.float32, device=self.device
        )
        bufs = (torch.empty_like(data.q[0]), lse(), torch.empty_like(data.q[0]), lse())
        # SGLang's ragged path gets the new tokens' K/V contiguous from the QKV projection.
        new_kv = [(data.k[i[2].long()], data.v[i[2].long()]) for i in idx]
        plan_fns = [
            functools.partial(self._plan_ragged_merge, ragged[r], prefix[r], plan, idx[r][1])
            for r in range(data.sets)
        ]
        run_fns = [
            functools.partial(
                _run_ragged_merge,
                ragged[r],
                prefix[r],
                self.merge_state,
                data.q[r],
                new_kv[r][0],
                new_kv[r][1],
                (data.k, data.v),
                bufs,
            )
            for r in range(data.sets)
        ]
        return self._measure(plan_fns, run_fns, ref)

    def _impl_b(self, data: _Data, plan: HostPlan, idx: list, ref: tuple) -> ImplResult:
        out = torch.empty_like(data.q[0])
        sweep: dict[str, ImplResult] = {}
        for config in self.triton_configs:
            label = config_label(config)
            sweep[label] = self._guard(
                f"B[{label}]", functools.partial(self._b_config, data, plan, ref, config, out)
            )
        timed = {k: r for k, r in sweep.items() if r.ms is not None}
        table = {k: asdict(r) for k, r in sweep.items()}
        if not timed:
            failure = "; ".join(f"{k}: {r.failure}" for k, r in sweep.items())
            errs = [r.err for r in sweep.values() if r.err is not None]
            return ImplResult(err=min(errs, default=None), failure=failure, sweep=table)
        label, best = min(timed.items(), key=lambda kv: kv[1].ms)
        return ImplResult(best.ms, best.plan_ms, best.err, config=label, sweep=table)

    def _b_config(
        self, data: _Data, plan: HostPlan, ref: tuple, config: dict[str, int], out: torch.Tensor
    ) -> ImplResult:
        qo, offsets, lens = _i32(plan.qo_indptr), _i32(plan.kv_offsets), _i32(plan.kv_lens)
        ws = [
            TritonMSAWrapper(NUM_QO_HEADS, NUM_KV_HEADS, HEAD_DIM, **config)
            for _ in range(data.sets)
        ]
        plan_fns = [
            functools.partial(ws[r].plan, qo, offsets, lens, data.slots[r].reshape(-1))
            for r in range(data.sets)
        ]
        run_fns = [
            functools.partial(ws[r].run, data.q[r], data.k, data.v, SM_SCALE, out=out)
            for r in range(data.sets)
        ]
        return self._measure(plan_fns, run_fns, ref)


# ---------------------------------------------------------------- driver


def _versions() -> dict[str, str | None]:
    def dist(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": dist("triton"),
        "flashinfer": dist("flashinfer-python"),
        "sglang": dist("sglang"),
    }


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m eval.msa_bench", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON path")
    p.add_argument("--contexts", type=_ints, default=[4096, 16384, 32768])
    p.add_argument("--segments", type=_ints, default=[1, 2, 4, 8])
    p.add_argument("--placements", type=lambda s: s.split(","), default=list(PLACEMENTS))
    p.add_argument("--impls", type=lambda s: s.split(","), default=list(IMPLS))
    p.add_argument(
        "--query-fraction",
        type=float,
        default=0.25,
        help="query tokens per request as a fraction of the context",
    )
    p.add_argument("--batch", type=int, default=1, help="copies of the request, own KV slots")
    p.add_argument(
        "--triton-configs",
        default=DEFAULT_TRITON_CONFIGS,
        help="'default' or BMxBNxWARPSxSTAGES, comma-separated; the best is reported",
    )
    p.add_argument("--rotations", type=int, default=4, help="minimum input sets to cycle")
    p.add_argument("--bench-ms", type=float, default=100.0, help="GPU time per measurement")
    p.add_argument("--plan-reps", type=int, default=5)
    p.add_argument("--check-block", type=int, default=32, help="rows per checked block")
    p.add_argument("--ragged-backend", default="auto", help="SGLang uses 'auto' (fa3 on H100)")
    p.add_argument("--workspace-mb", type=int, default=512, help="FlashInfer float workspace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", action="store_true", help="also write a PNG next to the JSON")
    args = p.parse_args(argv)
    bad = [x for x in args.placements if x not in PLACEMENTS] + [
        x for x in args.impls if x not in IMPLS
    ]
    if bad:
        p.error(f"unknown placements/impls: {bad}")
    if not 0 < args.query_fraction <= 1:
        p.error("--query-fraction must be in (0, 1]")
    parse_triton_configs(args.triton_configs)
    return args


def _plot(rows: Sequence[dict[str, Any]], impls: Sequence[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print(f"[msa_bench] no plot: {exc}", flush=True)
        return
    fig, axes = plt.subplots(1, len(impls), figsize=(3.4 * len(impls), 3.0), sharey=True)
    axes = [axes] if len(impls) == 1 else list(axes)
    styles = dict(zip(PLACEMENTS, ("-", "--", ":")))
    contexts = sorted({r["context"] for r in rows})
    colors = dict(zip(contexts, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for ax, impl in zip(axes, impls):
        for context in contexts:
            for placement in PLACEMENTS:
                pts = sorted(
                    (r["segments"], r[f"{impl}_ratio"])
                    for r in rows
                    if r["context"] == context
                    and r["placement"] == placement
                    and r.get(f"{impl}_ratio") is not None
                )
                if pts:
                    ax.plot(
                        *zip(*pts),
                        styles[placement],
                        color=colors.get(context, "k"),
                        marker=".",
                        label=f"{context // 1024}K {placement}",
                    )
        ax.axhline(RATIO_LIMIT, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{impl}: time / contiguous", fontsize=9)
        ax.set_xlabel("segments", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, ncol=1)
    fig.tight_layout()
    save_figure(fig, path, dpi=70)
    plt.close(fig)
    print(f"[msa_bench] plot: {path} ({path.stat().st_size // 1024} KiB)", flush=True)


def _ms(value: float | None) -> str:
    return "FAILED" if value is None else f"{value:.3f} ms"


def _progress_cell(row: dict[str, Any], impl: str) -> str:
    ratio = row[f"{impl}_ratio"]
    return f"{impl} {_ms(row[f'{impl}_ms'])}" + ("" if ratio is None else f" ({ratio:.2f}x)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid, write the JSON after every row, print the tables and the summary."""
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("[msa_bench] needs a CUDA device", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    bench = GPUBench(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        **result_header(),
        "versions": _versions(),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "geometry": {
            "num_qo_heads": NUM_QO_HEADS,
            "num_kv_heads": NUM_KV_HEADS,
            "head_dim": HEAD_DIM,
            "dtype": "bfloat16",
            "sm_scale": SM_SCALE,
        },
        "tolerance": TOLERANCE,
        "rows": [],
    }
    rows: list[dict[str, Any]] = report["rows"]

    def save() -> None:
        report.update(
            reference="asymcache_sglang.kernels.msa_triton.reference_msa (float64)",
            backends=bench.resolved_backends(),
            summary=summarize(rows, args.impls),
            elapsed_s=round(time.perf_counter() - t_start, 1),
        )
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    for context in args.contexts:
        q_tokens = max(1, round(context * args.query_fraction))
        data = bench.make_data(context, q_tokens, args.batch)
        print(
            f"[msa_bench] L={context} Q={q_tokens} batch={args.batch} sets={data.sets}", flush=True
        )
        tail = segments_for(context, q_tokens, 1, "head")
        if not rows:
            print("  (first plans may JIT-compile FlashInfer modules not in the cache)", flush=True)
        # The contiguous baseline is the 1-segment layout: paged = A, SGLang ragged = C on it.
        base_res = bench.geometry(data, tail, sorted({"A", "C", *args.impls}))
        baseline = {"paged": base_res["A"].ms, "ragged": base_res["C"].ms}
        print(
            f"  contiguous: paged {_ms(baseline['paged'])}, ragged {_ms(baseline['ragged'])}",
            flush=True,
        )
        cache = {tuple(tail): base_res}
        for placement in args.placements:
            for n in args.segments:
                segs = segments_for(context, q_tokens, n, placement)
                if tuple(segs) not in cache:
                    cache[tuple(segs)] = bench.geometry(data, segs, args.impls)
                res = {impl: cache[tuple(segs)][impl] for impl in args.impls}
                row = make_row(context, placement, segs, args.batch, baseline, res)
                rows.append(row)
                cells = ", ".join(_progress_cell(row, impl) for impl in args.impls)
                print(f"  {placement:6s} n={n}: work {row['work_ratio']:.2f}; {cells}", flush=True)
                save()
        del data, cache, base_res
        torch.cuda.empty_cache()

    save()
    print("\nTime / contiguous baseline (faster of FlashInfer paged and SGLang ragged+merge):\n")
    print(format_ratio_table(rows, args.impls, args.segments))
    print("\nTime ratio / work ratio:\n")
    print(format_ratio_table(rows, args.impls, args.segments, key="ratio_per_work"))
    print("\nSummary (rows with 2+ segments):")
    for impl, s in report["summary"].items():
        verdict = "OK" if s["ok"] else "NOT OK"
        ratio = "—" if s["max_ratio"] is None else f"{s['max_ratio']:.3f}"
        print(
            f"  {impl}: max ratio {ratio} at {s['worst_case']} -> {verdict} (<= {RATIO_LIMIT});"
            f" untimed rows {s['untimed_rows']}"
        )
    if args.plot:
        _plot(rows, args.impls, args.out.with_suffix(".png"))
    print(f"[msa_bench] wrote {args.out} in {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
