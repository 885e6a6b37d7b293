"""Multi-Segment Attention (MSA): causal prefill attention over many KV segments in one launch.

A segment is a run of query rows that attends a prefix of a paged KV sequence. AsymCache splits a
request into several segments when its cached prefix has holes (evicted interior blocks), so the
recomputed runs must attend to the whole sequence, cached and recomputed, with one kernel per layer.

Semantics (FlashInfer's ragged prefill with a bottom-right causal mask): segment ``j`` owns query
rows ``[qo_indptr[j], qo_indptr[j + 1])``; its KV tokens live in pool slots
``kv_indices[kv_offsets[j] + i]`` for ``i < kv_lens[j]``; query row ``t`` of the segment sits at
position ``kv_lens[j] - q_len + t`` and attends positions ``0..p`` inclusive. Segments of one
request share a ``kv_indices`` range (same offset, different lengths).

``TritonMSAWrapper.plan`` builds the launch's block table on the host once per forward;
``run`` launches one kernel per layer. ``reference_msa`` is the float64 reference for tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634
# Query rows (tokens x heads) per program: the fastest tile of the sweep in eval/RESULTS.md.
_DEFAULT_ROWS = 128


@triton.jit
def _msa_tile(
    acc,
    l_i,
    m_i,
    q,
    q_pos,
    k_base,
    v_base,
    slot_base,
    kv_start,
    kv_stop,
    kv_end,
    stride_kp,
    stride_vp,
    qk_scale,
    offs_n,
    offs_d,
    MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    """Fold KV positions [kv_start, kv_stop) into the online-softmax state of one query block."""
    for start_n in range(kv_start, kv_stop, BLOCK_N):
        kv_pos = start_n + offs_n
        if MASKED:
            kv_ok = kv_pos < kv_end
            slots = tl.load(slot_base + kv_pos, mask=kv_ok, other=0).to(tl.int64)
            # other=0: garbage V would turn p = 0 into 0 * NaN.
            k_ptrs = k_base + slots[:, None] * stride_kp + offs_d[None, :]
            v_ptrs = v_base + slots[:, None] * stride_vp + offs_d[None, :]
            k = tl.load(k_ptrs, mask=kv_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=kv_ok[:, None], other=0.0)
        else:
            # Every position before the block's first query is visible to all its rows.
            slots = tl.load(slot_base + kv_pos).to(tl.int64)
            k = tl.load(k_base + slots[:, None] * stride_kp + offs_d[None, :])
            v = tl.load(v_base + slots[:, None] * stride_vp + offs_d[None, :])

        if FP32_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            # TF32 would cost ~1e-3 relative error; fp32 callers asked for fp32.
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = qk * qk_scale
        if MASKED:
            visible = (kv_pos[None, :] <= q_pos[:, None]) & kv_ok[None, :]
            qk = tl.where(visible, qk, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # A row with nothing visible keeps m = -inf; shift by 0 so exp2 gives 0, not NaN.
        # (Tile 0 holds position 0, visible to every row, so this is a per-row guard only.)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(qk - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if FP32_DOT:
            pv = tl.dot(p, v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _msa_fwd_kernel(
    Q,
    K,
    V,
    Out,
    KvIndices,
    BlockTable,
    stride_qt,
    stride_qh,
    stride_kp,
    stride_kh,
    stride_vp,
    stride_vh,
    stride_ot,
    stride_oh,
    qk_scale,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    FP32_DOT: tl.constexpr,
):
    """One program: BLOCK_M query tokens of one segment x the GROUP q heads of one kv head."""
    block = tl.program_id(0)
    kv_head = tl.program_id(1)
    row = BlockTable + block * 4  # columns: first q row, valid tokens, kv offset, first position
    q_row0 = tl.load(row).to(tl.int64)  # int64: row * stride can pass 2**31 on big batches
    n_tok = tl.load(row + 1)
    kv_offset = tl.load(row + 2)
    pos0 = tl.load(row + 3)

    # Row r of the packed tile is token r // GROUP_PAD, head kv_head * GROUP + r % GROUP_PAD.
    offs_r = tl.arange(0, BLOCK_M * GROUP_PAD)
    tok = offs_r // GROUP_PAD
    grp = offs_r % GROUP_PAD
    row_ok = (tok < n_tok) & (grp < GROUP)
    q_head = kv_head * GROUP + grp
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)

    q_off = (q_row0 + tok)[:, None] * stride_qt + q_head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
    if FP32_DOT:
        q = q.to(tl.float32)
    q_pos = pos0 + tok

    m_i = tl.full([BLOCK_M * GROUP_PAD], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M * GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M * GROUP_PAD, HEAD_DIM], dtype=tl.float32)

    k_base = K + kv_head.to(tl.int64) * stride_kh
    v_base = V + kv_head.to(tl.int64) * stride_vh
    slot_base = KvIndices + kv_offset
    kv_end = pos0 + n_tok  # one past the block's last query position
    full_end = (pos0 // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _msa_tile(
        acc, l_i, m_i, q, q_pos, k_base, v_base, slot_base, 0, full_end, kv_end,
        stride_kp, stride_vp, qk_scale, offs_n, offs_d, False, BLOCK_N, FP32_DOT,
    )  # fmt: skip
    acc, l_i, m_i = _msa_tile(
        acc, l_i, m_i, q, q_pos, k_base, v_base, slot_base, full_end, kv_end, kv_end,
        stride_kp, stride_vp, qk_scale, offs_n, offs_d, True, BLOCK_N, FP32_DOT,
    )  # fmt: skip

    # A row that saw no KV would have l = 0: write 0 rather than NaN.
    acc = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    o_off = (q_row0 + tok)[:, None] * stride_ot + q_head[:, None] * stride_oh + offs_d[None, :]
    tl.store(Out + o_off, acc.to(Out.dtype.element_ty), mask=row_ok[:, None])


def _host_ints(name: str, t: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Check one host metadata tensor and return it as int64."""
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU tensor (host metadata), got device {t.device}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    if length is not None and t.numel() != length:
        raise ValueError(f"{name} has {t.numel()} entries, expected {length}")
    t = t.to(torch.int64)
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} must be non-negative")
    return t


class TritonMSAWrapper:
    """Plan once per forward (host block table), run once per layer (one launch)."""

    def __init__(
        self,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        block_m: int | None = None,
        block_n: int = 64,
        num_warps: int = 4,
        num_stages: int = 3,
    ) -> None:
        if num_qo_heads <= 0 or num_kv_heads <= 0:
            raise ValueError("num_qo_heads and num_kv_heads must be positive")
        if num_qo_heads % num_kv_heads:
            raise ValueError(
                f"num_qo_heads ({num_qo_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
            )
        if head_dim < 16 or head_dim & (head_dim - 1):
            raise ValueError(f"head_dim must be a power of two >= 16, got {head_dim}")
        self.num_qo_heads = num_qo_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.group = num_qo_heads // num_kv_heads
        self.group_pad = triton.next_power_of_2(self.group)
        if block_m is None:
            block_m = max(1, _DEFAULT_ROWS // self.group_pad)
        if block_m <= 0 or block_m & (block_m - 1):
            raise ValueError(f"block_m must be a positive power of two, got {block_m}")
        if block_m * self.group_pad < 16:
            raise ValueError(
                f"block_m * next_pow2(group) must be >= 16 (tl.dot minimum), got "
                f"{block_m} * {self.group_pad}"
            )
        if block_n < 16 or block_n & (block_n - 1):
            raise ValueError(f"block_n must be a power of two >= 16, got {block_n}")
        self.block_m = block_m
        self.block_n = block_n
        self.num_warps = num_warps
        self.num_stages = num_stages
        self._table: torch.Tensor | None = None
        self._table_host: torch.Tensor | None = None
        self._kv_indices: torch.Tensor | None = None
        self._num_rows = 0

    def plan(
        self,
        qo_indptr: torch.Tensor,
        kv_offsets: torch.Tensor,
        kv_lens: torch.Tensor,
        kv_indices: torch.Tensor,
    ) -> None:
        """Validate the batch layout and build the (block -> segment rows) table on the host."""
        qo_indptr = _host_ints("qo_indptr", qo_indptr)
        if qo_indptr.numel() < 1:
            raise ValueError("qo_indptr needs at least one entry")
        n_seg = qo_indptr.numel() - 1
        kv_offsets = _host_ints("kv_offsets", kv_offsets, n_seg)
        kv_lens = _host_ints("kv_lens", kv_lens, n_seg)
        if not isinstance(kv_indices, torch.Tensor) or kv_indices.dim() != 1:
            raise ValueError("kv_indices must be a 1-D tensor")
        if kv_indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"kv_indices must be int32 or int64, got {kv_indices.dtype}")
        if kv_indices.numel() and kv_indices.stride(0) != 1:
            raise ValueError("kv_indices must be contiguous")
        if int(qo_indptr[0]) != 0:
            raise ValueError(f"qo_indptr[0] must be 0, got {int(qo_indptr[0])}")
        q_lens = qo_indptr[1:] - qo_indptr[:-1]
        if n_seg and int(q_lens.min()) < 0:
            raise ValueError("qo_indptr must be non-decreasing")
        bad = (q_lens > kv_lens).nonzero()
        if bad.numel():
            j = int(bad[0])
            raise ValueError(
                f"segment {j}: q_len {int(q_lens[j])} > kv_len {int(kv_lens[j])} "
                "(queries must be the tail of their KV sequence)"
            )
        kv_ends = kv_offsets + kv_lens
        if n_seg and int(kv_ends.max()) > kv_indices.numel():
            j = int(kv_ends.argmax())
            raise ValueError(
                f"segment {j}: kv_offsets + kv_lens = {int(kv_ends[j])} exceeds "
                f"kv_indices length {kv_indices.numel()}"
            )
        if kv_indices.numel() >= 2**31 or int(qo_indptr[-1]) >= 2**31:
            raise ValueError("kv_indices and the query rows must stay below 2**31 entries")

        bm = self.block_m
        n_blocks = (q_lens + bm - 1) // bm
        seg = torch.repeat_interleave(torch.arange(n_seg), n_blocks)
        first_block = torch.cumsum(n_blocks, 0) - n_blocks
        start = (torch.arange(seg.numel()) - first_block[seg]) * bm  # token offset in segment
        table = torch.stack(
            [
                qo_indptr[seg] + start,
                torch.clamp(q_lens[seg] - start, max=bm),
                kv_offsets[seg],
                kv_lens[seg] - q_lens[seg] + start,
            ],
            dim=1,
        ).to(torch.int32)
        if kv_indices.device.type == "cuda":
            table = table.pin_memory()
        # Keep the host copy alive: a non_blocking copy may still be reading it.
        self._table_host = table
        self._table = table.to(kv_indices.device, non_blocking=True)
        self._kv_indices = kv_indices
        self._num_rows = int(qo_indptr[-1])

    def run(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        sm_scale: float,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention for every planned segment of one layer; returns ``out`` [T, Hq, D]."""
        if self._table is None:
            raise RuntimeError("call plan() before run()")
        hq, hkv, d = self.num_qo_heads, self.num_kv_heads, self.head_dim
        if q.dim() != 3 or tuple(q.shape) != (self._num_rows, hq, d):
            raise ValueError(f"q must be [{self._num_rows}, {hq}, {d}], got {tuple(q.shape)}")
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            if cache.dim() != 3 or tuple(cache.shape[1:]) != (hkv, d):
                raise ValueError(f"{name} must be [P, {hkv}, {d}], got {tuple(cache.shape)}")
            if cache.dtype != q.dtype or cache.device != q.device:
                raise ValueError(f"{name} must match q's dtype and device")
        if q.device != self._kv_indices.device:
            raise ValueError(f"q is on {q.device} but kv_indices is on {self._kv_indices.device}")
        if out is None:
            out = torch.empty_like(q, memory_format=torch.contiguous_format)
        elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
            raise ValueError("out must match q's shape, dtype and device")
        for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
            if t.stride(2) != 1:
                raise ValueError(f"{name} must be contiguous along head_dim")
        # CPU tensors mean the interpreter, whose tl.dot multiplies bf16 bit patterns
        # (triton-lang/triton#11584); it gets fp32 operands instead.
        fp32_dot = q.dtype == torch.float32 or (
            q.device.type == "cpu" and q.dtype == torch.bfloat16
        )
        n_blocks = self._table.shape[0]
        if n_blocks == 0:
            return out
        _msa_fwd_kernel[(n_blocks, hkv)](
            q, k_cache, v_cache, out, self._kv_indices, self._table,
            q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
            v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1),
            sm_scale * _LOG2E,
            GROUP=self.group, GROUP_PAD=self.group_pad, BLOCK_M=self.block_m,
            BLOCK_N=self.block_n, HEAD_DIM=d, FP32_DOT=fp32_dot,
            num_warps=self.num_warps, num_stages=self.num_stages,
        )  # fmt: skip
        return out


def reference_msa(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_offsets: torch.Tensor,
    kv_lens: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
) -> torch.Tensor:
    """Plain float64 MSA, one segment at a time; returns [T, Hq, D] float64."""
    group = q.shape[1] // k_cache.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    for j in range(kv_lens.numel()):
        q0, q1 = int(qo_indptr[j]), int(qo_indptr[j + 1])
        kv_len, off = int(kv_lens[j]), int(kv_offsets[j])
        if q1 == q0:
            continue
        slots = kv_indices[off : off + kv_len].long()
        k = k_cache[slots].double().repeat_interleave(group, dim=1)  # [L, Hq, D]
        v = v_cache[slots].double().repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,lhd->htl", q[q0:q1].double(), k) * sm_scale
        q_pos = torch.arange(kv_len - (q1 - q0), kv_len, device=q.device)
        visible = torch.arange(kv_len, device=q.device)[None, :] <= q_pos[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
        out[q0:q1] = torch.einsum("htl,lhd->thd", scores.softmax(-1), v)
    return out
