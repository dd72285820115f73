"""Triton attention for many short sequences (the temporal fusion stage).

Math: as :mod:`rsfm_kernels.attn`, ``O = softmax(Q K^T * scale + mask_bias) V`` per
sequence, where a "sequence" is one ``(b, h)`` pair of ``(B, H, L, D)`` inputs and ``L`` is
small (4..64 in the temporal fusion stage, at most ``SHORT_MAX_LEN``).

Packing: ``S = B * H`` sequences are packed ``SEQS`` at a time into one program. Query row
``r`` of a tile belongs to local sequence ``r // L_q`` at position ``r % L_q`` (keys likewise
with ``L_k``); the score tile ``(BLOCK_M, BLOCK_N)`` is masked block-diagonally
(``seq(row) == seq(col)``), so one ``tl.dot`` serves ``SEQS`` sequences and the tile is
nearly full even for ``L = 4``. Rows carry their own ``(b, h, pos)`` address, so any strides
work: the encoder's ``(B*h*w, L, H, D) -> (B*h*w, H, L, D)`` view needs no copy. The large
sequence count goes on grid axis 0 (axis 1 is capped at 65535).

A whole sequence lives in one tile, so there is no online softmax, no log-sum-exp is
saved, and the backward is one pass: ``delta = rowsum(P * dP)`` (equal to ``rowsum(dO * O)``)
is computed in-tile, and dQ, dK, dV are written once each, without atomics, so the short
path is deterministic by construction.

Layouts: q ``(B, H, L_q, D)``, k and v ``(B, H, L_k, D)``, any strides (also stride 0);
key_valid ``(B, L_k)`` bool, True = valid. Dtypes: float16, bfloat16, float32
(float32 dots use ``input_precision="ieee"``). Head dims: multiples of 8 up to 128
(padded to a power of two with masks).

Caution: the block-diagonal tile spends ``SEQS`` times the useful FLOPs on masked scores;
that is free while the path is memory-bound (L <= 64) but makes it a poor choice for longer
sequences, hence ``SHORT_MAX_LEN`` and the automatic cut-over at ``SHORT_AUTO_LEN``.

Differences vs reference: none in the math; float32 softmax statistics, low-precision P and
dS fed to the dots (as FlashAttention does).

Input validation lives in :mod:`rsfm_kernels.attn.launch` (shared with the dense kernels),
the launch configs in :mod:`rsfm_kernels.attn.configs`, the portable exact dot in
:mod:`rsfm_kernels._triton_common`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_common import dot as _dot
from .._triton_common import gpu_arch
from .configs import short_config
from .launch import block_d, mask_args

# ---------------------------------------------------------------- kernels


@triton.jit
def _packed_rows(pid, L, H, S, SEQS: tl.constexpr, BLOCK: tl.constexpr):
    """Row r of packed tile ``pid`` -> (local sequence, batch, head, position, in range)."""
    r = tl.arange(0, BLOCK)
    local = r // L
    pos = r % L
    seq = pid * SEQS + local  # global sequence index = b * H + h (< 2**31)
    ok = (local < SEQS) & (seq < S)
    # int32 division, int64 offsets: b * stride_b overflows int32 at 65k sequences.
    return local, (seq // H).to(tl.int64), (seq % H).to(tl.int64), pos, ok


@triton.jit
def _row_ptrs(P, b, h, pos, offs_d, sb, sh, sn, sd):
    """(rows, BLOCK_D) pointers for rows that each carry their own (b, h, pos)."""
    return P + (b * sb + h * sh + pos * sn)[:, None] + offs_d[None, :] * sd


@triton.jit
def _packed_probs(
    q, k, b_n, pos_n, ok_n, seq_m, seq_n, MASK, smb, smn, qk_scale, HAS_MASK: tl.constexpr
):
    """Normalised P (float32, exactly 0 for masked keys and for rows with no valid key)."""
    s = _dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
    valid = (seq_m[:, None] == seq_n[None, :]) & ok_n[None, :]
    if HAS_MASK:
        keep = tl.load(MASK + b_n * smb + pos_n * smn, mask=ok_n, other=0)
        valid = valid & (keep != 0)[None, :]
    s = tl.where(valid, s, float("-inf"))
    m = tl.max(s, 1)
    m = tl.where(m == float("-inf"), 0.0, m)  # all-masked row: exp2(-inf - 0) = 0, no NaN
    p = tl.exp2(s - m[:, None])
    denom = tl.sum(p, 1)
    denom = tl.where(denom == 0.0, 1.0, denom)
    return p / denom[:, None]


@triton.jit
def _short_fwd_kernel(
    Q, K, V, Out, MASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, smb, smn,
    S, H, L_Q, L_K, qk_scale,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, SEQS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    seq_m, b_m, h_m, pos_m, ok_m = _packed_rows(pid, L_Q, H, S, SEQS, BLOCK_M)
    seq_n, b_n, h_n, pos_n, ok_n = _packed_rows(pid, L_K, H, S, SEQS, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # constant-folds when HEAD_DIM == BLOCK_D
    lm = ok_m[:, None] & d_ok[None, :]
    ln = ok_n[:, None] & d_ok[None, :]
    q = tl.load(_row_ptrs(Q, b_m, h_m, pos_m, offs_d, sqb, sqh, sqn, sqd), mask=lm, other=0.0)
    k = tl.load(_row_ptrs(K, b_n, h_n, pos_n, offs_d, skb, skh, skn, skd), mask=ln, other=0.0)
    v = tl.load(_row_ptrs(V, b_n, h_n, pos_n, offs_d, svb, svh, svn, svd), mask=ln, other=0.0)
    p = _packed_probs(q, k, b_n, pos_n, ok_n, seq_m, seq_n, MASK, smb, smn, qk_scale, HAS_MASK)
    o = _dot(p.to(v.dtype), v)
    o_ptrs = _row_ptrs(Out, b_m, h_m, pos_m, offs_d, sob, soh, son, sod)
    tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=lm)


@triton.jit
def _short_bwd_kernel(
    Q, K, V, DO, DQ, DK, DV, MASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    sdqb, sdqh, sdqn, sdqd, sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd, smb, smn,
    S, H, L_Q, L_K, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, SEQS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    seq_m, b_m, h_m, pos_m, ok_m = _packed_rows(pid, L_Q, H, S, SEQS, BLOCK_M)
    seq_n, b_n, h_n, pos_n, ok_n = _packed_rows(pid, L_K, H, S, SEQS, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    lm = ok_m[:, None] & d_ok[None, :]
    ln = ok_n[:, None] & d_ok[None, :]
    q = tl.load(_row_ptrs(Q, b_m, h_m, pos_m, offs_d, sqb, sqh, sqn, sqd), mask=lm, other=0.0)
    k = tl.load(_row_ptrs(K, b_n, h_n, pos_n, offs_d, skb, skh, skn, skd), mask=ln, other=0.0)
    v = tl.load(_row_ptrs(V, b_n, h_n, pos_n, offs_d, svb, svh, svn, svd), mask=ln, other=0.0)
    do = tl.load(_row_ptrs(DO, b_m, h_m, pos_m, offs_d, sdob, sdoh, sdon, sdod), mask=lm, other=0.0)
    p = _packed_probs(q, k, b_n, pos_n, ok_n, seq_m, seq_n, MASK, smb, smn, qk_scale, HAS_MASK)
    dv = _dot(tl.trans(p).to(do.dtype), do)  # (BLOCK_N, BLOCK_D)
    dp = _dot(do, tl.trans(v))  # (BLOCK_M, BLOCK_N)
    delta = tl.sum(p * dp, 1)  # == rowsum(dO * O), without reading O
    ds = p * (dp - delta[:, None])
    dq = _dot(ds.to(k.dtype), k) * sm_scale
    dk = _dot(tl.trans(ds).to(q.dtype), q) * sm_scale
    tl.store(
        _row_ptrs(DQ, b_m, h_m, pos_m, offs_d, sdqb, sdqh, sdqn, sdqd),
        dq.to(DQ.dtype.element_ty),
        mask=lm,
    )
    tl.store(
        _row_ptrs(DK, b_n, h_n, pos_n, offs_d, sdkb, sdkh, sdkn, sdkd),
        dk.to(DK.dtype.element_ty),
        mask=ln,
    )
    tl.store(
        _row_ptrs(DV, b_n, h_n, pos_n, offs_d, sdvb, sdvh, sdvn, sdvd),
        dv.to(DV.dtype.element_ty),
        mask=ln,
    )


# ---------------------------------------------------------------- launchers


def _grid(n_seq: int, seqs: int) -> tuple[int]:
    return (triton.cdiv(n_seq, seqs),)


def short_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    interpret: bool,
) -> torch.Tensor:
    """Packed forward; ``mask`` must come from :func:`check_inputs`. Returns O (B, H, L_q, D)."""
    B, H, l_q, D = q.shape
    l_k = k.shape[2]
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if o.numel() == 0:
        return o
    if l_k == 0:
        return o.zero_()
    cfg = short_config(l_q, l_k, D, gpu_arch(q.device), interpret)
    mp, smb, smn = mask_args(mask, q)
    _short_fwd_kernel[_grid(B * H, cfg.seqs)](
        q, k, v, o, mp,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), smb, smn,
        B * H, H, l_q, l_k, scale * 1.4426950408889634,
        HEAD_DIM=D, HAS_MASK=mask is not None, SEQS=cfg.seqs, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, BLOCK_D=block_d(D), num_warps=cfg.warps_fwd, num_stages=1,
    )  # fmt: skip
    return o


def short_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    interpret: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed one-pass backward: (dQ, dK, dV), deterministic (no atomics)."""
    if do.shape != q.shape:
        raise ValueError(
            f"attention backward: dO has shape {tuple(do.shape)}, expected {tuple(q.shape)}"
        )
    B, H, l_q, D = q.shape
    l_k = k.shape[2]
    if q.numel() == 0 or l_k == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    # Every row of every sequence is written by exactly one program: no zero fill.
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    do = do.to(q.dtype)
    cfg = short_config(l_q, l_k, D, gpu_arch(q.device), interpret)
    mp, smb, smn = mask_args(mask, q)
    _short_bwd_kernel[_grid(B * H, cfg.seqs)](
        q, k, v, do, dq, dk, dv, mp,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(),
        *dq.stride(), *dk.stride(), *dv.stride(), smb, smn,
        B * H, H, l_q, l_k, scale * 1.4426950408889634, scale,
        HEAD_DIM=D, HAS_MASK=mask is not None, SEQS=cfg.seqs, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, BLOCK_D=block_d(D), num_warps=cfg.warps_bwd, num_stages=1,
    )  # fmt: skip
    return dq, dk, dv
