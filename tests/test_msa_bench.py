"""CPU checks of the MSA microbenchmark's pure parts: segment layouts, work ratio, index plumbing,
and the report formatting. The GPU part is not run here."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asymcache_sglang.kernels.msa_triton import reference_msa
from eval import msa_bench as mb

REPO_ROOT = Path(__file__).resolve().parents[1]

GRID = [
    case
    for case in itertools.product(
        [64, 100, 4096, 16384, 32768], [0.05, 0.25, 0.5, 0.9, 1.0], [1, 2, 3, 4, 8], mb.PLACEMENTS
    )
    if round(case[0] * case[1]) >= case[2]  # at least one token per segment
]


def test_no_flashinfer_at_import(tmp_path: Path) -> None:
    """The module imports where FlashInfer can't (a poisoned package shadows any real one)."""
    (tmp_path / "flashinfer").mkdir()
    (tmp_path / "flashinfer" / "__init__.py").write_text("raise ImportError('poisoned')\n")
    code = "import eval.msa_bench, sys; assert 'flashinfer' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env)


@pytest.mark.parametrize(("context", "fraction", "n", "placement"), GRID)
def test_segments_are_ordered_disjoint_and_end_at_context(
    context: int, fraction: float, n: int, placement: str
) -> None:
    q_tokens = round(context * fraction)
    segs = mb.segments_for(context, q_tokens, n, placement)
    assert len(segs) == n
    assert sum(e - s for s, e in segs) == q_tokens
    assert segs[-1] == (context - (q_tokens - (q_tokens // n) * (n - 1)), context)
    assert segs[0][0] >= 0
    for (s0, e0), (s1, _) in zip(segs, segs[1:]):
        assert s0 < e0 <= s1
    assert all(e - s == q_tokens // n for s, e in segs[:-1])
    if n >= 2 and placement in ("head", "mixed"):
        assert segs[0][0] == 0


@pytest.mark.parametrize("context", [4096, 16384, 32768])
@pytest.mark.parametrize("n", [2, 4, 8])
def test_placement_regions_at_default_fraction(context: int, n: int) -> None:
    q = context // 4
    head = mb.segments_for(context, q, n, "head")[:-1]
    assert head[-1][1] <= context // 4
    middle = mb.segments_for(context, q, n, "middle")[:-1]
    assert context // 4 <= middle[0][0] and middle[-1][1] <= 3 * context // 4
    gaps = [b[0] - a[1] for a, b in zip(head, head[1:])]
    assert max(gaps, default=0) - min(gaps, default=0) <= 1  # equal up to rounding
    mixed = mb.segments_for(context, q, n, "mixed")
    starts = [s for s, _ in mixed[:-1]]
    steps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(steps, default=0) - min(steps, default=0) <= 1


def test_segments_examples_and_errors() -> None:
    assert mb.segments_for(4096, 1024, 1, "middle") == [(3072, 4096)]
    head = [(0, 256), (384, 640), (768, 1024), (3840, 4096)]
    assert mb.segments_for(4096, 1024, 4, "head") == head
    assert mb.segments_for(4096, 1024, 2, "middle") == [(1792, 2304), (3584, 4096)]
    assert mb.segments_for(4096, 1024, 3, "mixed") == [(0, 341), (1877, 2218), (3754, 4096)]
    for bad in [(4096, 0, 1, "head"), (4096, 5000, 1, "head"), (4096, 3, 4, "head")]:
        with pytest.raises(ValueError):
            mb.segments_for(*bad)
    with pytest.raises(ValueError):
        mb.segments_for(4096, 1024, 2, "tail")


def test_work_ratio() -> None:
    assert mb.causal_pairs(0, 4) == 1 + 2 + 3 + 4
    assert mb.causal_pairs(2, 4) == 3 + 4
    assert mb.work_ratio(4096, [(3072, 4096)]) == 1.0
    # Two tokens at positions 0 and 9 of a 10-token request vs the contiguous tail [8, 10).
    assert mb.work_ratio(10, [(0, 1), (9, 10)]) == pytest.approx((1 + 10) / (9 + 10))
    segs = mb.segments_for(32768, 8192, 8, "head")
    assert 0 < mb.work_ratio(32768, segs) < 1


def test_check_blocks() -> None:
    assert mb.check_blocks(50, 32) == [(0, 50)]
    assert mb.check_blocks(1000, 32) == [(0, 32), (484, 516), (968, 1000)]
    for length in range(1, 300, 7):
        blocks = mb.check_blocks(length, 16)
        assert blocks[0][0] == 0 and blocks[-1][1] == length
        assert all(a < b <= c for (a, b), (c, _) in zip(blocks, blocks[1:]))


def test_rotation_sets() -> None:
    l2 = 50 << 20
    assert mb.rotation_sets(25 << 20, l2, 4) == 8
    assert mb.rotation_sets(200 << 20, l2, 4) == 4
    assert mb.rotation_sets(1 << 20, l2, 4) == 12
    assert mb.rotation_sets(1 << 20, l2, 16) == 16


def test_triton_configs() -> None:
    assert mb.parse_triton_configs(mb.DEFAULT_TRITON_CONFIGS) == [{}]
    spec = "default,16x64x4x3"
    configs = mb.parse_triton_configs(spec)
    assert configs == [{}, {"block_m": 16, "block_n": 64, "num_warps": 4, "num_stages": 3}]
    assert ",".join(map(mb.config_label, configs)) == spec
    for bad in ["", "16x64x4", "16x64x4x0", "axbxcxd"]:
        with pytest.raises(ValueError):
            mb.parse_triton_configs(bad)


def _problem(context: int, segs: list[tuple[int, int]], batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pool = 3 * batch * context
    k = torch.randn(pool, 2, 16, generator=g)
    v = torch.randn(pool, 2, 16, generator=g)
    slots = torch.randperm(pool, generator=g)[: batch * context].view(batch, context).int()
    plan = mb.host_plan(context, segs, batch)
    q = torch.randn(plan.qo_indptr[-1], 8, 16, generator=g)
    return plan, q, k, v, slots


def _msa(plan_qo, offsets, lens, indices, q, k, v) -> torch.Tensor:
    t = torch.tensor
    return reference_msa(q, k, v, t(plan_qo), t(offsets), t(lens), indices, 0.25)


@pytest.mark.parametrize("placement", mb.PLACEMENTS)
@pytest.mark.parametrize("batch", [1, 2])
def test_index_plumbing_matches_reference(placement: str, batch: int) -> None:
    """A's per-segment KV lists and C's prefix/new-token split describe the same attention."""
    context = 96
    segs = mb.segments_for(context, 24, 4, placement)
    plan, q, k, v, slots = _problem(context, segs, batch)
    full, prefix, new = mb.slot_indices(plan, slots)
    flat = slots.reshape(-1)
    expected = _msa(plan.qo_indptr, plan.kv_offsets, plan.kv_lens, flat, q, k, v)
    # (A) sub-request j reads full[full_indptr[j]:full_indptr[j+1]] = the request's slots [0, e).
    got_a = _msa(plan.qo_indptr, plan.full_indptr[:-1], plan.kv_lens, full, q, k, v)
    torch.testing.assert_close(got_a, expected, rtol=0, atol=1e-12)
    for j, (r, s, e) in enumerate(plan.entries):
        assert torch.equal(prefix[plan.prefix_indptr[j] : plan.prefix_indptr[j + 1]], slots[r, :s])
        assert torch.equal(new[plan.qo_indptr[j] : plan.qo_indptr[j + 1]], slots[r, s:e])
    # (C) ragged causal over the new tokens + non-causal prefix, merged by log-sum-exp.
    torch.testing.assert_close(_ragged_merge(plan, q, k, v, prefix, new), expected)


def _ragged_merge(plan, q, k, v, prefix, new) -> torch.Tensor:
    out = torch.zeros(q.shape, dtype=torch.float64)
    for j, (_, s, _) in enumerate(plan.entries):
        q0, q1 = plan.qo_indptr[j], plan.qo_indptr[j + 1]
        keys = torch.cat([prefix[plan.prefix_indptr[j] : plan.prefix_indptr[j + 1]], new[q0:q1]])
        kk = k[keys.long()].double().repeat_interleave(4, dim=1)
        vv = v[keys.long()].double().repeat_interleave(4, dim=1)
        scores = torch.einsum("thd,nhd->thn", q[q0:q1].double(), kk) * 0.25
        causal = torch.arange(q1 - q0)[:, None] >= torch.arange(q1 - q0)[None, :]
        visible = torch.cat([torch.ones(q1 - q0, s, dtype=torch.bool), causal], dim=1)
        scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
        out[q0:q1] = torch.einsum("thn,nhd->thd", scores.softmax(-1), vv)
    return out


def test_check_problem_rows_match_full_reference() -> None:
    context = 400
    segs = mb.segments_for(context, 200, 3, "mixed")
    plan, q, k, v, slots = _problem(context, segs, 2)
    cp = mb.check_problem(plan, 8)
    flat = slots.reshape(-1)
    full = _msa(plan.qo_indptr, plan.kv_offsets, plan.kv_lens, flat, q, k, v)
    rows = torch.tensor(cp.rows)
    sub = _msa(cp.qo_indptr, cp.kv_offsets, cp.kv_lens, flat, q[rows], k, v)
    torch.testing.assert_close(sub, full[rows], rtol=0, atol=1e-12)
    # Every segment's first and last row is checked.
    assert set(plan.qo_indptr[:-1]) <= set(cp.rows)
    assert {i - 1 for i in plan.qo_indptr[1:]} <= set(cp.rows)


def _fake_rows() -> list[dict]:
    baseline = {"paged": 2.0, "ragged": 1.6}
    rows = []
    for placement in ("middle", "head"):
        for n, ms in ((1, 1.6), (2, 1.7), (4, 1.8)):
            segs = mb.segments_for(4096, 1024, n, placement)
            res = {
                "A": mb.ImplResult(ms=ms, plan_ms=0.1, err=1e-3),
                "B": mb.ImplResult(ms=ms * 0.9, plan_ms=0.05, err=2e-3, config="default"),
                "C": mb.ImplResult(err=0.5, failure="rel err 5.0e-01 > 0.01"),
            }
            rows.append(mb.make_row(4096, placement, segs, 1, baseline, res))
    return rows


def test_make_row_ratios() -> None:
    row = _fake_rows()[1]
    assert row["segments"] == 2 and row["baseline_ms"]["best"] == 1.6
    assert row["A_ratio"] == pytest.approx(1.7 / 1.6)
    assert row["A_ratio_per_work"] == pytest.approx(row["A_ratio"] / row["work_ratio"])
    assert row["C_ratio"] is None and "C" in row["failures"]
    assert row["B_config"] == "default" and row["errors"]["B"] == 2e-3
    assert row["A_plan_ms"] == 0.1 and row["B_plan_ms"] == 0.05


def test_table_and_summary() -> None:
    rows = _fake_rows()
    table = mb.format_ratio_table(rows, ["A", "B", "C"], [1, 2, 4])
    lines = table.splitlines()
    assert lines[0].startswith("| context | placement | A n=1 | A n=2 | A n=4 | B n=1")
    assert lines[2].startswith("| 4096 | head | 1.00 | 1.06 | 1.12 | 0.90")  # head sorts first
    assert lines[2].endswith("| — | — | — |")
    summary = mb.summarize(rows, ["A", "B", "C"])
    assert summary["A"]["max_ratio"] == pytest.approx(1.8 / 1.6) and not summary["A"]["ok"]
    assert summary["B"]["ok"] and summary["B"]["worst_case"] == "L=4096 middle n=4"
    assert summary["C"]["max_ratio"] is None and summary["C"]["untimed_rows"] == 4
    assert not summary["C"]["ok"]


def test_parse_args_defaults_and_errors() -> None:
    args = mb.parse_args([])
    assert args.contexts == [4096, 16384, 32768] and args.segments == [1, 2, 4, 8]
    assert args.query_fraction == 0.25 and args.impls == ["A", "B", "C"]
    assert mb.parse_args(["--impls", "A,C", "--contexts", "4096"]).impls == ["A", "C"]
    for bad in (["--impls", "D"], ["--placements", "tail"], ["--query-fraction", "0"]):
        with pytest.raises(SystemExit):
            mb.parse_args(bad)
