"""The FlashAttention-2 kernels behind the ``triton`` backend (sequences longer than the
packed path's): forward, backward preprocess, dK/dV (with the atomic dQ) and the
deterministic dQ, their launchers and autotuning. Math, layouts, dtypes and caveats:
:mod:`rsfm_kernels.attn`; launch configs: :mod:`rsfm_kernels.attn.configs`.

Structure that every kernel shares:
- Ragged tails. A loop over key blocks runs its full blocks without any bounds mask and
  then the one ragged last block (``N_k % BLOCK_N != 0``) with masks, so only that block
  pays for them. Out-of-range keys of the ragged block get score ``-inf`` (zero-filled
  loads alone would not do: ``exp2(0 - LSE)`` overflows when every real score is below
  -128 in log2 units, and ``inf * 0`` is NaN). The dK/dV program that owns the ragged key
  block takes a second copy of its loop with that score mask; the other programs run
  mask-free. Query-side raggedness costs only predicated loads (padded rows read
  ``LSE = +inf``), so the dK/dV kernel's query loop is not split (see :func:`_kv_loop`).
- Loads either through pointers (any strides) or, with ``TMA``, through in-kernel tensor
  descriptors of one head (``(N, HEAD_DIM)``, unit last stride, 16-byte aligned strides:
  checked by the launcher, which turns ``TMA`` off otherwise); descriptors zero-fill
  out-of-range rows and head-dim columns in hardware. Offered on sm90/sm100 only.
- ``PERSISTENT`` (forward): one program per SM slot loops over (query block, b, h) tiles.

Imported only where Triton is installed (Linux): :mod:`rsfm_kernels.attn` keeps the
SDPA and reference backends working without it."""

from __future__ import annotations

import dataclasses
import math

import torch
import triton
import triton.language as tl

from .._triton_common import INTERPRETED as _INTERPRETED
from .._triton_common import (
    autotune_enabled,
    ensure_allocator,
    gpu_arch,
    sm_count,
    tma_compatible,
    tma_strides,
)
from .._triton_common import dot as _dot
from .._triton_common import load_tile as _load_tile
from .._triton_common import store_tile as _store_tile
from . import configs as CF
from .launch import block_d, mask_args

LOG2E = 1.4426950408889634
PRE_M = 64  # rows per program of the backward preprocess (it also zero-fills dQ)

# Tests replace this to run the TMA / persistent paths under the interpreter.
INTERPRETER_CONFIGS = CF.INTERPRETER


def launch_configs(
    d: int, dtype: torch.dtype, device: torch.device
) -> tuple[CF.LaunchConfig, CF.LaunchConfig, CF.LaunchConfig]:
    """(fwd, kv, dq) pinned launch configs for head dim ``d`` on ``device``."""
    if _INTERPRETED and device.type == "cpu":
        return INTERPRETER_CONFIGS
    return CF.pinned(gpu_arch(device), block_d(d), dtype)


def _bucket(n: int) -> int:
    """Autotuning key: a sequence length rounded up to a power of 4 in [256, 16384]."""
    b = 256
    while b < n and b < 16384:
        b *= 4
    return b


# ---------------------------------------------------------------- Triton helpers


@triton.jit
def _program_coords(pid, n_blk, H):
    """Tile id -> (block index, b * H + h, b, h); blocks of one (b, h) are neighbours."""
    bh = pid // n_blk
    return pid % n_blk, bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def _tile_ptrs(P, b, h, idx, offs_d, sb, sh, sn, sd):
    """(len(idx), BLOCK_D) pointers into a (B, H, N, D) tensor of any strides."""
    return P + b * sb + h * sh + idx[:, None] * sn + offs_d[None, :] * sd


@triton.jit
def _head_source(
    P, b, h, sb, sh, sn, N,
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """What :func:`_read` reads one head from: a (N, HEAD_DIM) tensor descriptor with
    (BLOCK_R, BLOCK_D) tiles when ``TMA``, else the pointer itself."""
    if TMA:
        src = tl.make_tensor_descriptor(
            P + b * sb + h * sh, shape=[N, HEAD_DIM], strides=[sn, 1], block_shape=[BLOCK_R, BLOCK_D]
        )  # fmt: skip
    else:
        src = P
    return src


@triton.jit
def _read(
    src, b, h, start, offs_r, offs_d, sb, sh, sn, sd, n, d_ok,
    FULL: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """Rows ``start + offs_r`` of one head; rows >= n and padded columns read as 0."""
    if TMA:
        x = src.load([start, 0])
    else:
        rows = start + offs_r
        ptrs = _tile_ptrs(src, b, h, rows, offs_d, sb, sh, sn, sd)
        x = _load_tile(ptrs, rows < n, d_ok, FULL, EVEN_D)
    return x


@triton.jit
def _key_keep(MASK, smn, cols, n_k, HAS_MASK: tl.constexpr, FULL: tl.constexpr):
    """Which keys of a block take part: in range and (if masked) valid."""
    if HAS_MASK:
        if FULL:
            keep = tl.load(MASK + cols * smn) != 0
        else:
            keep = tl.load(MASK + cols * smn, mask=cols < n_k, other=0) != 0
    else:
        keep = cols < n_k
    return keep


_EVEN = {
    "EVEN_M": lambda a: a["N_Q"] % a["BLOCK_M"] == 0,
    "EVEN_N": lambda a: a["N_K"] % a["BLOCK_N"] == 0,
    "EVEN_D": lambda a: a["HEAD_DIM"] == a["BLOCK_D"],
}


# ---------------------------------------------------------------- forward


@triton.jit
def _fwd_step(
    acc, l_i, m_i, q, k_src, v_src, b, h, start_n, offs_n, offs_d, d_ok,
    skb, skh, skn, skd, svb, svh, svn, svd, m_base, smn, N_K, qk_scale,
    HAS_MASK: tl.constexpr, FULL: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """One key block of the online softmax; ``FULL``: the block lies inside N_K."""
    k = _read(
        k_src, b, h, start_n, offs_n, offs_d, skb, skh, skn, skd, N_K, d_ok, FULL, EVEN_D, TMA
    )
    v = _read(
        v_src, b, h, start_n, offs_n, offs_d, svb, svh, svn, svd, N_K, d_ok, FULL, EVEN_D, TMA
    )
    s = _dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
    if HAS_MASK or not FULL:
        keep = _key_keep(m_base, smn, start_n + offs_n, N_K, HAS_MASK, FULL)
        s = tl.where(keep[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid key yet: no NaN
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _fwd_tile(
    tile, Q, K, V, Out, LSE, MASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, smb, smn,
    H, N_Q, N_K, qk_scale,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, TMA: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    # query blocks of one (b, h) run side by side, so its K/V stay in L2
    start_m, bh, b, h = _program_coords(tile, tl.cdiv(N_Q, BLOCK_M), H)
    offs_r = tl.arange(0, BLOCK_M)
    offs_m = start_m * BLOCK_M + offs_r
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_src = _head_source(Q, b, h, sqb, sqh, sqn, N_Q, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
    k_src = _head_source(K, b, h, skb, skh, skn, N_K, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
    v_src = _head_source(V, b, h, svb, svh, svn, N_K, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
    q = _read(q_src, b, h, start_m * BLOCK_M, offs_r, offs_d, sqb, sqh, sqn, sqd, N_Q, d_ok,
              EVEN_M, EVEN_D, TMA)  # fmt: skip
    m_base = MASK + b * smb

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_full = (N_K // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _fwd_step(
            acc, l_i, m_i, q, k_src, v_src, b, h, start_n, offs_n, offs_d, d_ok,
            skb, skh, skn, skd, svb, svh, svn, svd, m_base, smn, N_K, qk_scale,
            HAS_MASK, True, EVEN_D, TMA,
        )  # fmt: skip
    if n_full < N_K:  # the ragged last key block, the only one with bounds masks
        acc, l_i, m_i = _fwd_step(
            acc, l_i, m_i, q, k_src, v_src, b, h, n_full, offs_n, offs_d, d_ok,
            skb, skh, skn, skd, svb, svh, svn, svd, m_base, smn, N_K, qk_scale,
            HAS_MASK, False, EVEN_D, TMA,
        )  # fmt: skip

    empty = l_i == 0.0  # every key masked: output 0, LSE +inf so the backward's P is 0
    l_safe = tl.where(empty, 1.0, l_i)
    acc = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(l_safe))
    tl.store(LSE + bh.to(tl.int64) * N_Q + offs_m, lse, mask=offs_m < N_Q)
    out = acc.to(Out.dtype.element_ty)
    if TMA:
        o_desc = _head_source(Out, b, h, sob, soh, son, N_Q, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
        o_desc.store([start_m * BLOCK_M, 0], out)  # rows >= N_Q are clipped by the unit
    else:
        o_ptrs = _tile_ptrs(Out, b, h, offs_m, offs_d, sob, soh, son, sod)
        _store_tile(o_ptrs, out, offs_m < N_Q, d_ok, EVEN_M, EVEN_D)


@triton.heuristics(_EVEN)
@triton.jit
def _fwd_kernel(
    Q, K, V, Out, LSE, MASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, smb, smn,
    B, H, N_Q, N_K, qk_scale, N_Q_BUCKET, N_K_BUCKET,  # buckets: the autotuner's key
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, TMA_OK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    TMA: tl.constexpr, PERSISTENT: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    tl.static_assert(TMA_OK or not TMA, "TMA needs descriptor-compatible inputs")
    n_tiles = tl.cdiv(N_Q, BLOCK_M) * B * H
    if PERSISTENT:
        for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            _fwd_tile(
                tile, Q, K, V, Out, LSE, MASK,
                sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                sob, soh, son, sod, smb, smn, H, N_Q, N_K, qk_scale,
                HEAD_DIM, HAS_MASK, BLOCK_M, BLOCK_N, BLOCK_D, TMA, EVEN_M, EVEN_D,
            )  # fmt: skip
    else:
        _fwd_tile(
            tl.program_id(0), Q, K, V, Out, LSE, MASK,
            sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
            sob, soh, son, sod, smb, smn, H, N_Q, N_K, qk_scale,
            HEAD_DIM, HAS_MASK, BLOCK_M, BLOCK_N, BLOCK_D, TMA, EVEN_M, EVEN_D,
        )  # fmt: skip


# ---------------------------------------------------------------- backward


@triton.jit
def _bwd_preprocess_kernel(
    Out, DO, DELTA, DQ, sob, soh, son, sod, sdob, sdoh, sdon, sdod, sdqb, sdqh, sdqn, sdqd,
    H, N_Q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ZERO_DQ: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(dO * O) in float32; with ZERO_DQ also zero the float32 dQ
    accumulator rows of this block (no separate memset pass)."""
    start_m, bh, b, h = _program_coords(tl.program_id(0), tl.cdiv(N_Q, BLOCK_M), H)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(_tile_ptrs(Out, b, h, offs_m, offs_d, sob, soh, son, sod), mask=ok, other=0.0)
    do = tl.load(_tile_ptrs(DO, b, h, offs_m, offs_d, sdob, sdoh, sdon, sdod), mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * N_Q + offs_m, delta, mask=offs_m < N_Q)
    if ZERO_DQ:
        zero = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        tl.store(_tile_ptrs(DQ, b, h, offs_m, offs_d, sdqb, sdqh, sdqn, sdqd), zero, mask=ok)


@triton.jit
def _kv_step(
    dk, dv, k, v, keep, q_src, do_src, DQ, LSE, DELTA, b, h, stat_base, start_m, offs_m,
    offs_d, d_ok, sqb, sqh, sqn, sqd, sdob, sdoh, sdon, sdod, sdqb, sdqh, sdqn, sdqd,
    N_Q, qk_scale, sm_scale,
    MASK_KEYS: tl.constexpr, ATOMIC_DQ: tl.constexpr, FULL: tl.constexpr,
    EVEN_D: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """One query block of the dK/dV program; ``FULL``: the block lies inside N_Q (no row
    predicates)."""
    rows = start_m + offs_m
    q = _read(
        q_src, b, h, start_m, offs_m, offs_d, sqb, sqh, sqn, sqd, N_Q, d_ok, FULL, EVEN_D, TMA
    )
    do = _read(do_src, b, h, start_m, offs_m, offs_d, sdob, sdoh, sdon, sdod, N_Q, d_ok,
               FULL, EVEN_D, TMA)  # fmt: skip
    if FULL:
        lse = tl.load(LSE + stat_base + rows)
        delta = tl.load(DELTA + stat_base + rows)
    else:  # padded rows: LSE = +inf makes their P exactly 0
        lse = tl.load(LSE + stat_base + rows, mask=rows < N_Q, other=float("inf"))
        delta = tl.load(DELTA + stat_base + rows, mask=rows < N_Q, other=0.0)
    qk_t = _dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M)
    if MASK_KEYS:
        qk_t = tl.where(keep[:, None], qk_t, float("-inf"))
    p_t = tl.exp2(qk_t - lse[None, :])
    dv += _dot(p_t.to(do.dtype), do)
    dp_t = _dot(v, tl.trans(do))
    ds_t = p_t * (dp_t - delta[None, :])
    dk += _dot(ds_t.to(q.dtype), q)
    if ATOMIC_DQ:
        # float32 partial dQ of this key block; "relaxed": only the sum matters, nothing
        # else is ordered against these adds (the kernel boundary is the only sync).
        dq = _dot(tl.trans(ds_t).to(k.dtype), k) * sm_scale  # (BLOCK_M, BLOCK_D)
        dq_ptrs = _tile_ptrs(DQ, b, h, rows, offs_d, sdqb, sdqh, sdqn, sdqd)
        if FULL and EVEN_D:
            tl.atomic_add(dq_ptrs, dq, sem="relaxed")
        elif FULL:
            tl.atomic_add(dq_ptrs, dq, mask=d_ok[None, :], sem="relaxed")
        else:
            tl.atomic_add(dq_ptrs, dq, mask=(rows < N_Q)[:, None] & d_ok[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _kv_loop(
    dk, dv, k, v, keep, q_src, do_src, DQ, LSE, DELTA, b, h, stat_base, offs_m, offs_d, d_ok,
    sqb, sqh, sqn, sqd, sdob, sdoh, sdon, sdod, sdqb, sdqh, sdqn, sdqd, N_Q, qk_scale, sm_scale,
    MASK_KEYS: tl.constexpr, ATOMIC_DQ: tl.constexpr, BLOCK_M: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """All query blocks for one key block. Query rows need no score mask (padded rows have
    LSE = +inf), only predicated loads, and those only when N_Q % BLOCK_M != 0: unlike the
    key loops, this loop is not split (peeling its last block raised sm80's registers at
    D = 128 from 212 to 255 with 1 KB of spills in the offline compile)."""
    for start_m in range(0, N_Q, BLOCK_M):
        dk, dv = _kv_step(
            dk, dv, k, v, keep, q_src, do_src, DQ, LSE, DELTA, b, h, stat_base, start_m, offs_m,
            offs_d, d_ok, sqb, sqh, sqn, sqd, sdob, sdoh, sdon, sdod, sdqb, sdqh, sdqn, sdqd,
            N_Q, qk_scale, sm_scale, MASK_KEYS, ATOMIC_DQ, EVEN_M, EVEN_D, TMA,
        )  # fmt: skip
    return dk, dv


@triton.heuristics(_EVEN)
@triton.jit
def _bwd_kv_kernel(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA, MASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    sdqb, sdqh, sdqn, sdqd, sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd, smb, smn,
    H, N_Q, N_K, qk_scale, sm_scale, N_Q_BUCKET, N_K_BUCKET,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    TMA_OK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, TMA: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    tl.static_assert(TMA_OK or not TMA, "TMA needs descriptor-compatible inputs")
    start_n, bh, b, h = _program_coords(tl.program_id(0), tl.cdiv(N_K, BLOCK_N), H)
    offs_n = tl.arange(0, BLOCK_N)
    cols = start_n * BLOCK_N + offs_n
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = cols < N_K
    d_ok = offs_d < HEAD_DIM
    k_src = _head_source(K, b, h, skb, skh, skn, N_K, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
    v_src = _head_source(V, b, h, svb, svh, svn, N_K, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
    k = _read(k_src, b, h, start_n * BLOCK_N, offs_n, offs_d, skb, skh, skn, skd, N_K, d_ok,
              EVEN_N, EVEN_D, TMA)  # fmt: skip
    v = _read(v_src, b, h, start_n * BLOCK_N, offs_n, offs_d, svb, svh, svn, svd, N_K, d_ok,
              EVEN_N, EVEN_D, TMA)  # fmt: skip
    keep = _key_keep(MASK + b * smb, smn, cols, N_K, HAS_MASK, False)
    q_src = _head_source(Q, b, h, sqb, sqh, sqn, N_Q, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
    do_src = _head_source(DO, b, h, sdob, sdoh, sdon, N_Q, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
    stat_base = bh.to(tl.int64) * N_Q

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if HAS_MASK or EVEN_N:  # one loop: with the key-padding mask everywhere, or no mask
        dk, dv = _kv_loop(
            dk, dv, k, v, keep, q_src, do_src, DQ, LSE, DELTA, b, h, stat_base, offs_m, offs_d,
            d_ok, sqb, sqh, sqn, sqd, sdob, sdoh, sdon, sdod, sdqb, sdqh, sdqn, sdqd, N_Q,
            qk_scale, sm_scale, HAS_MASK, ATOMIC_DQ, BLOCK_M, EVEN_M, EVEN_D, TMA,
        )  # fmt: skip
    elif (start_n + 1) * BLOCK_N <= N_K:  # a full key block: no score mask
        dk, dv = _kv_loop(
            dk, dv, k, v, keep, q_src, do_src, DQ, LSE, DELTA, b, h, stat_base, offs_m, offs_d,
            d_ok, sqb, sqh, sqn, sqd, sdob, sdoh, sdon, sdod, sdqb, sdqh, sdqn, sdqd, N_Q,
            qk_scale, sm_scale, False, ATOMIC_DQ, BLOCK_M, EVEN_M, EVEN_D, TMA,
        )  # fmt: skip
    else:  # the ragged last key block: out-of-range keys get score -inf
        dk, dv = _kv_loop(
            dk, dv, k, v, keep, q_src, do_src, DQ, LSE, DELTA, b, h, stat_base, offs_m, offs_d,
            d_ok, sqb, sqh, sqn, sqd, sdob, sdoh, sdon, sdod, sdqb, sdqh, sdqn, sdqd, N_Q,
            qk_scale, sm_scale, True, ATOMIC_DQ, BLOCK_M, EVEN_M, EVEN_D, TMA,
        )  # fmt: skip

    dk_ptrs = _tile_ptrs(DK, b, h, cols, offs_d, sdkb, sdkh, sdkn, sdkd)
    dv_ptrs = _tile_ptrs(DV, b, h, cols, offs_d, sdvb, sdvh, sdvn, sdvd)
    _store_tile(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), n_ok, d_ok, EVEN_N, EVEN_D)
    _store_tile(dv_ptrs, dv.to(DV.dtype.element_ty), n_ok, d_ok, EVEN_N, EVEN_D)


@triton.jit
def _dq_step(
    dq, q, do, lse, delta, k_src, v_src, b, h, start_n, offs_n, offs_d, d_ok,
    skb, skh, skn, skd, svb, svh, svn, svd, m_base, smn, N_K, qk_scale,
    HAS_MASK: tl.constexpr, FULL: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    k = _read(
        k_src, b, h, start_n, offs_n, offs_d, skb, skh, skn, skd, N_K, d_ok, FULL, EVEN_D, TMA
    )
    v = _read(
        v_src, b, h, start_n, offs_n, offs_d, svb, svh, svn, svd, N_K, d_ok, FULL, EVEN_D, TMA
    )
    qk = _dot(q, tl.trans(k)) * qk_scale
    if HAS_MASK or not FULL:
        keep = _key_keep(m_base, smn, start_n + offs_n, N_K, HAS_MASK, FULL)
        qk = tl.where(keep[None, :], qk, float("-inf"))
    p = tl.exp2(qk - lse[:, None])
    dp = _dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.to(k.dtype), k)


@triton.heuristics(_EVEN)
@triton.jit
def _bwd_q_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, MASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    sdqb, sdqh, sdqn, sdqd, smb, smn,
    H, N_Q, N_K, qk_scale, sm_scale, N_Q_BUCKET, N_K_BUCKET,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, TMA_OK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, TMA: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """Deterministic dQ: one program per query block loops over key blocks (no atomics)."""
    tl.static_assert(TMA_OK or not TMA, "TMA needs descriptor-compatible inputs")
    start_m, bh, b, h = _program_coords(tl.program_id(0), tl.cdiv(N_Q, BLOCK_M), H)
    offs_r = tl.arange(0, BLOCK_M)
    rows = start_m * BLOCK_M + offs_r
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = rows < N_Q
    d_ok = offs_d < HEAD_DIM
    q_src = _head_source(Q, b, h, sqb, sqh, sqn, N_Q, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
    do_src = _head_source(DO, b, h, sdob, sdoh, sdon, N_Q, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
    k_src = _head_source(K, b, h, skb, skh, skn, N_K, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
    v_src = _head_source(V, b, h, svb, svh, svn, N_K, HEAD_DIM, BLOCK_N, BLOCK_D, TMA)
    q = _read(q_src, b, h, start_m * BLOCK_M, offs_r, offs_d, sqb, sqh, sqn, sqd, N_Q, d_ok,
              EVEN_M, EVEN_D, TMA)  # fmt: skip
    do = _read(do_src, b, h, start_m * BLOCK_M, offs_r, offs_d, sdob, sdoh, sdon, sdod, N_Q,
               d_ok, EVEN_M, EVEN_D, TMA)  # fmt: skip
    stat_base = bh.to(tl.int64) * N_Q
    lse = tl.load(LSE + stat_base + rows, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + stat_base + rows, mask=m_ok, other=0.0)
    m_base = MASK + b * smb

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_full = (N_K // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq = _dq_step(
            dq, q, do, lse, delta, k_src, v_src, b, h, start_n, offs_n, offs_d, d_ok,
            skb, skh, skn, skd, svb, svh, svn, svd, m_base, smn, N_K, qk_scale,
            HAS_MASK, True, EVEN_D, TMA,
        )  # fmt: skip
    if n_full < N_K:
        dq = _dq_step(
            dq, q, do, lse, delta, k_src, v_src, b, h, n_full, offs_n, offs_d, d_ok,
            skb, skh, skn, skd, svb, svh, svn, svd, m_base, smn, N_K, qk_scale,
            HAS_MASK, False, EVEN_D, TMA,
        )  # fmt: skip
    dq_ptrs = _tile_ptrs(DQ, b, h, rows, offs_d, sdqb, sdqh, sdqn, sdqd)
    _store_tile(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), m_ok, d_ok, EVEN_M, EVEN_D)


# ---------------------------------------------------------------- autotuning

KERNELS = {"fwd": _fwd_kernel, "kv": _bwd_kv_kernel, "dq": _bwd_q_kernel}
_TUNED: dict[tuple, object] = {}


def _meta(cfg: CF.LaunchConfig, kernel: str) -> dict:
    meta = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "TMA": cfg.tma}
    if kernel == "fwd":
        meta["PERSISTENT"] = cfg.persistent
    return meta


def _keep_tma_ok(configs, nargs, **kwargs):
    """Drop descriptor configs when the inputs cannot back a descriptor."""
    ok = kwargs.get("TMA_OK", nargs.get("TMA_OK"))
    return [c for c in configs if ok or not c.kwargs.get("TMA")]


def tuned(kernel: str, arch: str, bd: int, dtype: torch.dtype):
    """The ``triton.autotune`` wrapper of one kernel over its space for (family, head-dim
    tile, dtype), built on first use. Timings persist on disk (Triton's cache directory,
    ``TRITON_CACHE_DIR``), keyed by the kernel source, the configs and the key below."""
    key = (kernel, CF.family_of(arch), CF.d_class(bd), dtype == torch.float32)
    if key not in _TUNED:
        configs = [
            triton.Config(_meta(c, kernel), num_warps=c.num_warps, num_stages=c.num_stages)
            for c in CF.space(arch, bd, dtype, kernel)
        ]
        tune_key = ["N_Q_BUCKET", "N_K_BUCKET", "HEAD_DIM", "HAS_MASK", "TMA_OK"]
        _TUNED[key] = triton.autotune(
            configs=configs,
            key=tune_key + (["ATOMIC_DQ"] if kernel == "kv" else []),
            prune_configs_by={"early_config_prune": _keep_tma_ok},
            reset_to_zero=["DQ"] if kernel == "kv" else None,  # atomic dQ: every trial from 0
            cache_results=True,
        )(KERNELS[kernel])
    return _TUNED[key]


def _launch(kernel: str, cfg: CF.LaunchConfig, programs, args, meta, device, dtype) -> None:
    """Run ``kernel`` with the pinned ``cfg``, or autotuned (the default on GPU).

    ``programs(meta)`` gives the number of programs on grid axis 0.
    """
    if autotune_enabled() and device.type == "cuda":
        fn = tuned(kernel, gpu_arch(device), meta["BLOCK_D"], dtype)
        fn[lambda m: (programs(m),)](*args, **meta)
        return
    full = {**meta, **_meta(cfg, kernel)}
    KERNELS[kernel][(programs(full),)](
        *args, **full, num_warps=cfg.num_warps, num_stages=cfg.num_stages
    )


def _tma_ok(*tensors: torch.Tensor) -> bool:
    return all(tma_compatible(t) for t in tensors)


# ---------------------------------------------------------------- launchers


def dense_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention-2 forward; ``mask`` from :func:`check_inputs`. Returns (O, LSE (B, H, N_q))."""
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, n_q), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    if n_k == 0:
        return o.zero_(), lse.fill_(math.inf)
    cfg = launch_configs(D, q.dtype, q.device)[0]
    tma_ok = _tma_ok(q, k, v, o)
    if not tma_ok:
        cfg = dataclasses.replace(cfg, tma=False)
    if tma_ok:
        ensure_allocator()
    mp, smb, smn = mask_args(mask, q)
    slots = 2 * sm_count(q.device)

    def programs(m):
        tiles = triton.cdiv(n_q, m["BLOCK_M"]) * B * H
        return min(tiles, slots) if m["PERSISTENT"] else tiles

    args = (
        q, k, v, o, lse, mp,
        *tma_strides(q), *tma_strides(k), *tma_strides(v), *tma_strides(o), smb, smn,
        B, H, n_q, n_k, scale * LOG2E, _bucket(n_q), _bucket(n_k),
    )  # fmt: skip
    meta = dict(HEAD_DIM=D, HAS_MASK=mask is not None, TMA_OK=tma_ok, BLOCK_D=block_d(D))
    _launch("fwd", cfg, programs, args, meta, q.device, q.dtype)
    return o, lse


def dense_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dQ, dK, dV). dQ: float32 relaxed atomics from the dK/dV kernel into a buffer the
    preprocess zero-fills, then cast; or, when ``deterministic``, a second kernel."""
    if do.shape != q.shape:
        raise ValueError(
            f"attention backward: dO has shape {tuple(do.shape)}, expected {tuple(q.shape)}"
        )
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    if q.numel() == 0 or n_k == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # every row written
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    do = do.to(q.dtype)
    _, kv_cfg, dq_cfg = launch_configs(D, q.dtype, q.device)
    bd = block_d(D)
    # Atomic dQ accumulates in float32 (in place when q is float32 already).
    dq = torch.empty(q.shape, dtype=q.dtype if deterministic else torch.float32, device=q.device)
    delta = torch.empty((B, H, n_q), dtype=torch.float32, device=q.device)
    pre_m = 16 if _INTERPRETED and q.device.type == "cpu" else PRE_M
    _bwd_preprocess_kernel[(triton.cdiv(n_q, pre_m) * B * H,)](
        o, do, delta, dq, *o.stride(), *do.stride(), *dq.stride(), H, n_q,
        HEAD_DIM=D, BLOCK_M=pre_m, BLOCK_D=bd, ZERO_DQ=not deterministic,
    )  # fmt: skip
    tma_ok = _tma_ok(q, k, v, do)
    if not tma_ok:
        kv_cfg, dq_cfg = (dataclasses.replace(c, tma=False) for c in (kv_cfg, dq_cfg))
    if tma_ok:
        ensure_allocator()
    mp, smb, smn = mask_args(mask, q)
    meta = dict(HEAD_DIM=D, HAS_MASK=mask is not None, TMA_OK=tma_ok, BLOCK_D=bd)
    buckets = (_bucket(n_q), _bucket(n_k))
    args = (
        q, k, v, do, dq, dk, dv, lse, delta, mp,
        *tma_strides(q), *tma_strides(k), *tma_strides(v), *tma_strides(do),
        *dq.stride(), *dk.stride(), *dv.stride(), smb, smn,
        H, n_q, n_k, scale * LOG2E, scale, *buckets,
    )  # fmt: skip
    _launch(
        "kv", kv_cfg, lambda m: triton.cdiv(n_k, m["BLOCK_N"]) * B * H, args,
        {**meta, "ATOMIC_DQ": not deterministic}, q.device, q.dtype,
    )  # fmt: skip
    if deterministic:
        args = (
            q, k, v, do, dq, lse, delta, mp,
            *tma_strides(q), *tma_strides(k), *tma_strides(v), *tma_strides(do), *dq.stride(), smb, smn,
            H, n_q, n_k, scale * LOG2E, scale, *buckets,
        )  # fmt: skip
        _launch(
            "dq", dq_cfg, lambda m: triton.cdiv(n_q, m["BLOCK_M"]) * B * H, args, meta,
            q.device, q.dtype,
        )  # fmt: skip
    return dq.to(q.dtype), dk, dv
