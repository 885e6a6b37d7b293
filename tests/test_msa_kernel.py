"""Multi-segment attention kernel against a float64 reference, on CPU (interpreter) and GPU."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

# Without CUDA, conftest.py has set TRITON_INTERPRET=1 before this import.
from asymcache_sglang.kernels.msa_triton import TritonMSAWrapper, reference_msa

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}

# A request is (kv_len, segments); a segment [a, b) recomputes positions a..b-1 and attends 0..b-1.
Request = tuple[int, list[tuple[int, int]]]


@dataclass
class Batch:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    qo_indptr: torch.Tensor
    kv_offsets: torch.Tensor
    kv_lens: torch.Tensor
    kv_indices: torch.Tensor

    def plan(self, wrapper: TritonMSAWrapper) -> None:
        wrapper.plan(self.qo_indptr, self.kv_offsets, self.kv_lens, self.kv_indices)

    def reference(self, sm_scale: float) -> torch.Tensor:
        return reference_msa(
            self.q, self.k_cache, self.v_cache, self.qo_indptr, self.kv_offsets,
            self.kv_lens, self.kv_indices, sm_scale,
        )  # fmt: skip


def make_batch(
    requests: list[Request],
    hq: int,
    hkv: int,
    d: int,
    dtype: torch.dtype,
    index_dtype: torch.dtype = torch.int32,
    seed: int = 0,
    device: str = DEVICE,
) -> Batch:
    """Random q and KV pool; each request's tokens sit at scattered slots of a larger pool."""
    gen = torch.Generator().manual_seed(seed)
    total_kv = sum(kv_len for kv_len, _ in requests)
    pool = total_kv + 37  # spare slots the kernel must never read
    slots = torch.randperm(pool, generator=gen)[:total_kv]
    qo_indptr, kv_offsets, kv_lens = [0], [], []
    offset = 0
    for kv_len, segments in requests:
        for a, b in segments:
            assert 0 <= a <= b <= kv_len
            qo_indptr.append(qo_indptr[-1] + b - a)
            kv_offsets.append(offset)
            kv_lens.append(b)
        offset += kv_len
    n_rows = qo_indptr[-1]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    return Batch(
        q=rand(n_rows, hq, d),
        k_cache=rand(pool, hkv, d),
        v_cache=rand(pool, hkv, d),
        qo_indptr=torch.tensor(qo_indptr),
        kv_offsets=torch.tensor(kv_offsets),
        kv_lens=torch.tensor(kv_lens),
        kv_indices=slots.to(device=device, dtype=index_dtype),
    )


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def run_and_check(wrapper: TritonMSAWrapper, batch: Batch, tol: float) -> None:
    """Plan, run into a NaN-poisoned buffer, compare with the float64 reference."""
    sm_scale = 1.0 / math.sqrt(batch.q.shape[-1])
    batch.plan(wrapper)
    out = torch.full_like(batch.q, float("nan"))
    result = wrapper.run(batch.q, batch.k_cache, batch.v_cache, sm_scale, out=out)
    assert result is out
    assert torch.isfinite(out).all(), "some output rows were never written"
    err = relative_error(out, batch.reference(sm_scale))
    assert err <= tol, f"relative error {err:.3e} > {tol:.0e}"


CPU_CASES: dict[str, tuple[list[Request], int, int]] = {
    # One request recomputing its tail after a 13-token cached prefix; MHA.
    "single_prefix": ([(40, [(13, 40)])], 4, 4),
    # Holes in the middle, segments share one kv_indices range; tail last.
    "holes_middle": ([(64, [(0, 5), (20, 33), (40, 64)])], 8, 2),
    # A hole at the head: the first recomputed segment starts after cached tokens.
    "hole_head": ([(48, [(8, 16), (30, 48)])], 8, 2),
    # Several requests; q_len 1 segments, an empty one, lengths off the block grid; GQA 8.
    "multi_request": (
        [(29, [(3, 4), (10, 29)]), (17, [(17, 17)]), (50, [(0, 1), (2, 19), (49, 50)])],
        8,
        1,
    ),
    # Decode-shaped: every segment is one token.
    "all_q_len_1": ([(9, [(8, 9)]), (33, [(32, 33)]), (1, [(0, 1)])], 4, 1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_segments_match_reference(case: str, dtype: torch.dtype) -> None:
    requests, hq, hkv = CPU_CASES[case]
    batch = make_batch(requests, hq, hkv, 32, dtype, seed=list(CPU_CASES).index(case))
    # block_n=16 makes the longer requests cross both the unmasked and the diagonal loops.
    run_and_check(TritonMSAWrapper(hq, hkv, 32, block_n=16), batch, TOLERANCE[dtype])


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_head_dims_and_index_dtypes(head_dim: int, index_dtype: torch.dtype) -> None:
    batch = make_batch(
        [(70, [(0, 6), (30, 70)])], 4, 1, head_dim, torch.float32, index_dtype, seed=head_dim
    )
    assert batch.kv_indices.dtype == index_dtype
    run_and_check(TritonMSAWrapper(4, 1, head_dim, block_n=32), batch, TOLERANCE[torch.float32])


@pytest.mark.parametrize(
    "block_m,block_n", [(None, 64), (8, 16), (16, 32)], ids=["default", "bm8_bn16", "bm16_bn32"]
)
def test_block_shapes(block_m: int | None, block_n: int) -> None:
    """Block tables and masks agree with the reference whatever the tile sizes."""
    batch = make_batch([(90, [(0, 3), (11, 40), (77, 90)]), (21, [(5, 21)])], 4, 2, 32,
                       torch.float32, seed=7)  # fmt: skip
    wrapper = TritonMSAWrapper(4, 2, 32, block_m=block_m, block_n=block_n)
    run_and_check(wrapper, batch, TOLERANCE[torch.float32])


def test_non_power_of_two_group() -> None:
    """GQA ratio 3 pads the packed head rows to 4; the padding must stay unwritten."""
    batch = make_batch([(35, [(4, 9), (20, 35)])], 6, 2, 32, torch.float32, seed=3)
    run_and_check(TritonMSAWrapper(6, 2, 32, block_n=16), batch, TOLERANCE[torch.float32])


def test_strided_buffers_and_plan_reuse() -> None:
    """q, K, V and out as views with distinct strides; one plan serves two layers."""
    hq, hkv, d = 4, 2, 32
    batch = make_batch([(45, [(0, 7), (25, 45)]), (12, [(11, 12)])], hq, hkv, d, torch.float32)
    wrapper = TritonMSAWrapper(hq, hkv, d, block_n=16)
    batch.plan(wrapper)
    sm_scale = 0.3
    n_rows, pool = batch.q.shape[0], batch.k_cache.shape[0]
    gen = torch.Generator().manual_seed(11)
    for layer_id in range(2):  # two "layers" with fresh weights, same plan
        qkv = torch.randn(n_rows, hq + 2 * hkv, d, generator=gen).to(DEVICE)
        k_fused = torch.randn(pool, 2, hkv, d, generator=gen).to(DEVICE)
        v_padded = torch.randn(pool, 3, hkv, 2, d, generator=gen).to(DEVICE)
        layer = Batch(qkv[:, :hq], k_fused[:, 0], v_padded[:, 1, :, 0], batch.qo_indptr,
                      batch.kv_offsets, batch.kv_lens, batch.kv_indices)  # fmt: skip
        assert layer.k_cache.stride()[:2] != layer.v_cache.stride()[:2]
        if layer_id == 0:
            out = wrapper.run(layer.q, layer.k_cache, layer.v_cache, sm_scale)
            assert out.shape == layer.q.shape and out.dtype == layer.q.dtype
        else:
            out = torch.full((n_rows, hq, 2 * d), float("nan"), device=DEVICE)[..., :d]
            assert wrapper.run(layer.q, layer.k_cache, layer.v_cache, sm_scale, out) is out
        assert relative_error(out, layer.reference(sm_scale)) <= TOLERANCE[torch.float32]


def test_reference_matches_dense_causal_attention() -> None:
    """The reference itself: one full-prefill segment equals torch's causal SDPA."""
    batch = make_batch([(20, [(0, 20)])], 4, 2, 16, torch.float64, device="cpu")
    ref = batch.reference(0.25)
    k = batch.k_cache[batch.kv_indices.long()].repeat_interleave(2, dim=1)
    v = batch.v_cache[batch.kv_indices.long()].repeat_interleave(2, dim=1)
    dense = torch.nn.functional.scaled_dot_product_attention(
        batch.q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, scale=0.25
    ).transpose(0, 1)
    torch.testing.assert_close(ref, dense)


def test_empty_batch_returns_without_launch() -> None:
    batch = make_batch([(5, [(5, 5)])], 2, 1, 32, torch.float32)
    wrapper = TritonMSAWrapper(2, 1, 32)
    batch.plan(wrapper)
    out = wrapper.run(batch.q, batch.k_cache, batch.v_cache, 1.0)
    assert out.shape == (0, 2, 32)


def _plan_args(**override: torch.Tensor) -> dict[str, torch.Tensor]:
    args = {
        "qo_indptr": torch.tensor([0, 4, 6]),
        "kv_offsets": torch.tensor([0, 0]),
        "kv_lens": torch.tensor([4, 10]),
        "kv_indices": torch.arange(10, dtype=torch.int32, device=DEVICE),
    }
    args.update(override)
    return args


@pytest.mark.parametrize(
    "override,message",
    [
        ({"kv_lens": torch.tensor([3, 10])}, r"segment 0: q_len 4 > kv_len 3"),
        ({"kv_lens": torch.tensor([4, 10, 10])}, r"kv_lens has 3 entries, expected 2"),
        ({"kv_offsets": torch.tensor([0])}, r"kv_offsets has 1 entries, expected 2"),
        ({"kv_offsets": torch.tensor([0, 1])}, r"segment 1: .* = 11 exceeds kv_indices length 10"),
        ({"kv_offsets": torch.tensor([0, -1])}, r"kv_offsets must be non-negative"),
        ({"qo_indptr": torch.tensor([0, 4, 3])}, r"qo_indptr must be non-decreasing"),
        ({"qo_indptr": torch.tensor([1, 4, 6])}, r"qo_indptr\[0\] must be 0"),
        ({"kv_lens": torch.tensor([4.0, 10.0])}, r"kv_lens must be an integer tensor"),
        ({"kv_indices": torch.arange(10, dtype=torch.int16)}, r"kv_indices must be int32 or int64"),
    ],
)
def test_plan_rejects_bad_layouts(override: dict[str, torch.Tensor], message: str) -> None:
    wrapper = TritonMSAWrapper(4, 2, 32)
    with pytest.raises(ValueError, match=message):
        wrapper.plan(**_plan_args(**override))


def test_bad_heads_and_run_shapes() -> None:
    with pytest.raises(ValueError, match=r"num_qo_heads \(6\) must be a multiple of num_kv_heads"):
        TritonMSAWrapper(6, 4, 32)
    with pytest.raises(ValueError, match=r"head_dim must be a power of two"):
        TritonMSAWrapper(4, 2, 48)
    with pytest.raises(ValueError, match=r"must be >= 16 \(tl.dot minimum\)"):
        TritonMSAWrapper(4, 2, 32, block_m=4)
    wrapper = TritonMSAWrapper(4, 2, 32)
    with pytest.raises(RuntimeError, match=r"plan\(\) before run\(\)"):
        wrapper.run(torch.zeros(6, 4, 32), torch.zeros(10, 2, 32), torch.zeros(10, 2, 32), 1.0)
    wrapper.plan(**_plan_args())
    kv = torch.zeros(10, 2, 32, device=DEVICE)
    with pytest.raises(ValueError, match=r"q must be \[6, 4, 32\]"):
        wrapper.run(torch.zeros(5, 4, 32, device=DEVICE), kv, kv, 1.0)
    with pytest.raises(ValueError, match=r"k_cache must be \[P, 2, 32\]"):
        wrapper.run(torch.zeros(6, 4, 32, device=DEVICE), torch.zeros(10, 4, 32), kv, 1.0)


def _long_request_batch(hq: int, hkv: int, dtype: torch.dtype, seed: int) -> Batch:
    """A 4096-token request split into 8 segments by holes, plus a prefix hit and a decode."""
    gen = torch.Generator().manual_seed(seed)
    cuts = sorted(torch.randperm(4095, generator=gen)[:14].add(1).tolist())
    bounds = [0, *cuts, 4096]  # 8 (start, stop) pairs: recompute, hole, recompute, ...
    segments = [(bounds[i], bounds[i + 1]) for i in range(0, 16, 2)]  # the last ends at 4096
    requests = [(4096, segments), (1500, [(700, 1500)]), (333, [(332, 333)])]
    return make_batch(requests, hq, hkv, 128, dtype, torch.int64, seed=seed)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize(
    "config",
    [{}, {"block_m": 32, "num_warps": 8, "num_stages": 3}, {"block_m": 8, "block_n": 32}],
    ids=["default", "bm32_w8_s3", "bm8_bn32"],
)
def test_gpu_long_segments(dtype: torch.dtype, config: dict[str, int]) -> None:
    """kv_len 4096 in 8 segments, 32 q heads over 8 kv heads, head_dim 128."""
    batch = _long_request_batch(32, 8, dtype, seed=1)
    run_and_check(TritonMSAWrapper(32, 8, 128, **config), batch, TOLERANCE[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv", [(32, 32), (32, 4), (28, 4)], ids=["mha", "gqa8", "gqa7"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_group_ratios(hq: int, hkv: int, head_dim: int) -> None:
    requests = [(1024, [(0, 100), (300, 301), (517, 1024)]), (200, [(37, 200)])]
    batch = make_batch(requests, hq, hkv, head_dim, torch.bfloat16, seed=hq + head_dim)
    run_and_check(TritonMSAWrapper(hq, hkv, head_dim), batch, TOLERANCE[torch.bfloat16])
