"""The Triton FlashAttention-2 kernels behind ``rsfm_kernels.attention`` (backends
``triton`` and ``triton_short``): launch configs, forward/backward kernels, launchers and
the autograd function. Math, layouts, dtypes and caveats: :mod:`rsfm_kernels.attn`.

Imported only where Triton is installed (Linux): :mod:`rsfm_kernels.attn` keeps the
SDPA and reference backends working without it."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .._triton_common import INTERPRETED as _INTERPRETED
from .._triton_common import dot as _dot
from .._triton_common import gpu_arch
from .launch import SHORT_AUTO_LEN, SHORT_MAX_LEN, block_d, check_inputs, mask_args
from .short import short_backward, short_forward

LOG2E = 1.4426950408889634


# ---------------------------------------------------------------- pinned launch configs


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# (arch, BLOCK_D) -> (forward, backward dK/dV, backward dQ). Starting points from the Triton
# fused-attention tutorial and FlashAttention-2's Triton port (forward 128x64; backward
# 32 queries x 128 keys for dK/dV, 128 x 32 for dQ), then adjusted until an offline compile
# for that arch (`python -m benchmarks.attention --compile-report`) showed no register spills
# and shared memory within the limit (sm90 228 KB, sm80 164 KB, others ~100 KB). Not yet
# timed on hardware.
_C = LaunchConfig
_PINNED = {
    ("sm90", 16): (_C(128, 64, 4, 4), _C(32, 128, 4, 4), _C(128, 32, 4, 4)),
    ("sm90", 32): (_C(128, 64, 4, 4), _C(32, 128, 4, 4), _C(128, 32, 4, 4)),
    ("sm90", 64): (_C(128, 64, 4, 3), _C(64, 128, 8, 3), _C(128, 32, 4, 3)),
    ("sm90", 128): (_C(128, 64, 8, 3), _C(32, 64, 8, 3), _C(64, 32, 4, 3)),
    ("sm80", 16): (_C(128, 64, 4, 3), _C(32, 128, 4, 3), _C(128, 32, 4, 3)),
    ("sm80", 32): (_C(128, 64, 4, 3), _C(32, 128, 4, 3), _C(128, 32, 4, 3)),
    ("sm80", 64): (_C(128, 64, 8, 3), _C(32, 128, 8, 2), _C(128, 32, 4, 2)),
    ("sm80", 128): (_C(128, 32, 8, 2), _C(32, 64, 8, 2), _C(64, 32, 4, 2)),
}
_SMALL_SMEM = (_C(64, 64, 4, 2), _C(32, 64, 4, 2), _C(64, 32, 4, 2))  # sm86/sm89 and others
_FP32 = (_C(64, 32, 4, 2), _C(32, 32, 4, 2), _C(32, 32, 4, 2))  # float32 tiles are 2x bigger
_INTERPRETER = (_C(16, 16, 1, 1), _C(16, 16, 1, 1), _C(16, 16, 1, 1))  # ~2 ms per step


def pinned_configs(
    d: int, dtype: torch.dtype, device: torch.device
) -> tuple[LaunchConfig, LaunchConfig, LaunchConfig]:
    """(forward, backward dK/dV, backward dQ) launch configs for head dim ``d``."""
    if _INTERPRETED and device.type == "cpu":
        return _INTERPRETER
    if dtype == torch.float32:
        return _FP32
    return _PINNED.get((gpu_arch(device), block_d(d)), _SMALL_SMEM)


def _bucket(n: int) -> int:
    """Autotune key: sequence length rounded up to a power of two in [64, 16384]."""
    return min(max(64, triton.next_power_of_2(n)), 16384)


# ---------------------------------------------------------------- Triton kernels


@triton.jit
def _load_tile(ptrs, rows_ok, cols_ok, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """2-D load, masked only along the dimensions that can be ragged."""
    if EVEN_ROWS:
        if EVEN_COLS:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=cols_ok[None, :], other=0.0)
    else:
        if EVEN_COLS:
            x = tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)
    return x


@triton.jit
def _store_tile(ptrs, x, rows_ok, cols_ok, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    if EVEN_ROWS:
        if EVEN_COLS:
            tl.store(ptrs, x)
        else:
            tl.store(ptrs, x, mask=cols_ok[None, :])
    else:
        if EVEN_COLS:
            tl.store(ptrs, x, mask=rows_ok[:, None])
        else:
            tl.store(ptrs, x, mask=rows_ok[:, None] & cols_ok[None, :])


@triton.jit
def _load_rows(ptrs, ok, other, EVEN: tl.constexpr):
    if EVEN:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=ok, other=other)
    return x


@triton.jit
def _key_keep(MASK, smn, cols, n_ok, HAS_MASK: tl.constexpr):
    """Which keys of a block take part: in range and (if masked) valid."""
    if HAS_MASK:
        keep = tl.load(MASK + cols * smn, mask=n_ok, other=0) != 0
    else:
        keep = n_ok
    return keep


@triton.jit
def _program_coords(pid, n_blk, H):
    """Grid axis 0 -> (block index, b * H + h, b, h); blocks of one (b, h) are neighbours."""
    bh = pid // n_blk
    return pid % n_blk, bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def _tile_ptrs(P, b, h, idx, offs_d, sb, sh, sn, sd):
    """(len(idx), BLOCK_D) pointers into a (B, H, N, D) tensor of any strides."""
    return P + b * sb + h * sh + idx[:, None] * sn + offs_d[None, :] * sd


_EVEN = {
    "EVEN_M": lambda a: a["N_Q"] % a["BLOCK_M"] == 0,
    "EVEN_N": lambda a: a["N_K"] % a["BLOCK_N"] == 0,
    "EVEN_D": lambda a: a["HEAD_DIM"] == a["BLOCK_D"],
}


@triton.heuristics(_EVEN)
@triton.jit
def _fwd_kernel(
    Q, K, V, Out, LSE, MASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, smb, smn,
    H, N_Q, N_K, qk_scale, N_Q_BUCKET, N_K_BUCKET,  # buckets: the opt-in autotuner's key
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    # query blocks of one (b, h) run side by side, so its K/V stay in L2
    start_m, bh, b, h = _program_coords(tl.program_id(0), tl.cdiv(N_Q, BLOCK_M), H)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N_Q
    d_ok = offs_d < HEAD_DIM
    q = _load_tile(
        _tile_ptrs(Q, b, h, offs_m, offs_d, sqb, sqh, sqn, sqd), m_ok, d_ok, EVEN_M, EVEN_D
    )
    k_base = K + b * skb + h * skh + offs_d[None, :] * skd
    v_base = V + b * svb + h * svh + offs_d[None, :] * svd
    m_base = MASK + b * smb

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        n_ok = cols < N_K
        k = _load_tile(k_base + cols[:, None] * skn, n_ok, d_ok, EVEN_N, EVEN_D)
        v = _load_tile(v_base + cols[:, None] * svn, n_ok, d_ok, EVEN_N, EVEN_D)
        s = _dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if HAS_MASK or not EVEN_N:
            keep = _key_keep(m_base, smn, cols, n_ok, HAS_MASK)
            s = tl.where(keep[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid key yet: no NaN
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v)
        m_i = m_new

    empty = l_i == 0.0  # every key masked: output 0, LSE +inf so the backward's P is 0
    l_safe = tl.where(empty, 1.0, l_i)
    acc = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(l_safe))
    tl.store(LSE + bh.to(tl.int64) * N_Q + offs_m, lse, mask=m_ok)
    o_ptrs = _tile_ptrs(Out, b, h, offs_m, offs_d, sob, soh, son, sod)
    _store_tile(o_ptrs, acc.to(Out.dtype.element_ty), m_ok, d_ok, EVEN_M, EVEN_D)


@triton.jit
def _bwd_preprocess_kernel(
    Out, DO, DELTA, sob, soh, son, sod, sdob, sdoh, sdon, sdod, H, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    start_m, bh, b, h = _program_coords(tl.program_id(0), tl.cdiv(N_Q, BLOCK_M), H)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m < N_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(_tile_ptrs(Out, b, h, offs_m, offs_d, sob, soh, son, sod), mask=ok, other=0.0)
    do = tl.load(_tile_ptrs(DO, b, h, offs_m, offs_d, sdob, sdoh, sdon, sdod), mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * N_Q + offs_m, delta, mask=offs_m < N_Q)


@triton.heuristics(_EVEN)
@triton.jit
def _bwd_kv_kernel(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA, MASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    sdqb, sdqh, sdqn, sdqd, sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd, smb, smn,
    H, N_Q, N_K, qk_scale, sm_scale, N_Q_BUCKET, N_K_BUCKET,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    start_n, bh, b, h = _program_coords(tl.program_id(0), tl.cdiv(N_K, BLOCK_N), H)
    cols = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = cols < N_K
    d_ok = offs_d < HEAD_DIM
    k = _load_tile(
        _tile_ptrs(K, b, h, cols, offs_d, skb, skh, skn, skd), n_ok, d_ok, EVEN_N, EVEN_D
    )
    v = _load_tile(
        _tile_ptrs(V, b, h, cols, offs_d, svb, svh, svn, svd), n_ok, d_ok, EVEN_N, EVEN_D
    )
    keep = _key_keep(MASK + b * smb, smn, cols, n_ok, HAS_MASK)
    q_base = Q + b * sqb + h * sqh + offs_d[None, :] * sqd
    do_base = DO + b * sdob + h * sdoh + offs_d[None, :] * sdod
    dq_base = DQ + b * sdqb + h * sdqh + offs_d[None, :] * sdqd
    stat_base = bh.to(tl.int64) * N_Q

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, N_Q, BLOCK_M):
        rows = start_m + offs_m
        m_ok = rows < N_Q
        q = _load_tile(q_base + rows[:, None] * sqn, m_ok, d_ok, EVEN_M, EVEN_D)
        do = _load_tile(do_base + rows[:, None] * sdon, m_ok, d_ok, EVEN_M, EVEN_D)
        lse = _load_rows(LSE + stat_base + rows, m_ok, float("inf"), EVEN_M)  # pad rows: P = 0
        delta = _load_rows(DELTA + stat_base + rows, m_ok, 0.0, EVEN_M)
        qk_t = _dot(k, tl.trans(q)) * qk_scale  # (BLOCK_N, BLOCK_M)
        if HAS_MASK or not EVEN_N:
            qk_t = tl.where(keep[:, None], qk_t, float("-inf"))
        p_t = tl.exp2(qk_t - lse[None, :])
        dv += _dot(p_t.to(do.dtype), do)
        dp_t = _dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q)
        if ATOMIC_DQ:
            dq = _dot(tl.trans(ds_t).to(k.dtype), k) * sm_scale  # (BLOCK_M, BLOCK_D)
            tl.atomic_add(dq_base + rows[:, None] * sdqn, dq, mask=m_ok[:, None] & d_ok[None, :])

    dk_ptrs = _tile_ptrs(DK, b, h, cols, offs_d, sdkb, sdkh, sdkn, sdkd)
    dv_ptrs = _tile_ptrs(DV, b, h, cols, offs_d, sdvb, sdvh, sdvn, sdvd)
    _store_tile(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), n_ok, d_ok, EVEN_N, EVEN_D)
    _store_tile(dv_ptrs, dv.to(DV.dtype.element_ty), n_ok, d_ok, EVEN_N, EVEN_D)


@triton.heuristics(_EVEN)
@triton.jit
def _bwd_q_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, MASK,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
    sdqb, sdqh, sdqn, sdqd, smb, smn,
    H, N_Q, N_K, qk_scale, sm_scale, N_Q_BUCKET, N_K_BUCKET,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """Deterministic dQ: one program per query block loops over key blocks (no atomics)."""
    start_m, bh, b, h = _program_coords(tl.program_id(0), tl.cdiv(N_Q, BLOCK_M), H)
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = rows < N_Q
    d_ok = offs_d < HEAD_DIM
    q = _load_tile(
        _tile_ptrs(Q, b, h, rows, offs_d, sqb, sqh, sqn, sqd), m_ok, d_ok, EVEN_M, EVEN_D
    )
    do = _load_tile(
        _tile_ptrs(DO, b, h, rows, offs_d, sdob, sdoh, sdon, sdod), m_ok, d_ok, EVEN_M, EVEN_D
    )
    stat_base = bh.to(tl.int64) * N_Q
    lse = _load_rows(LSE + stat_base + rows, m_ok, float("inf"), EVEN_M)
    delta = _load_rows(DELTA + stat_base + rows, m_ok, 0.0, EVEN_M)
    k_base = K + b * skb + h * skh + offs_d[None, :] * skd
    v_base = V + b * svb + h * svh + offs_d[None, :] * svd
    m_base = MASK + b * smb

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        n_ok = cols < N_K
        k = _load_tile(k_base + cols[:, None] * skn, n_ok, d_ok, EVEN_N, EVEN_D)
        v = _load_tile(v_base + cols[:, None] * svn, n_ok, d_ok, EVEN_N, EVEN_D)
        qk = _dot(q, tl.trans(k)) * qk_scale
        if HAS_MASK or not EVEN_N:
            keep = _key_keep(m_base, smn, cols, n_ok, HAS_MASK)
            qk = tl.where(keep[None, :], qk, float("-inf"))
        p = tl.exp2(qk - lse[:, None])
        dp = _dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k)
    dq_ptrs = _tile_ptrs(DQ, b, h, rows, offs_d, sdqb, sdqh, sdqn, sdqd)
    _store_tile(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), m_ok, d_ok, EVEN_M, EVEN_D)


# ---------------------------------------------------------------- opt-in autotuning


def _autotune_on() -> bool:
    return os.environ.get("RSFM_AUTOTUNE", "0") not in ("", "0") and not _INTERPRETED


_TUNED: dict[str, object] = {}


def _tuned(name: str):
    """The autotuned wrapper of a dense kernel, built on first use (RSFM_AUTOTUNE=1 only)."""
    if name not in _TUNED:
        if name == "bwd_kv":  # few queries x many keys per program (FA2's backward split)
            grid = itertools.product((16, 32, 64), (64, 128), (4, 8), (2, 3, 4))
        else:
            grid = itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4))
        configs = [
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in grid
        ]
        kernel = {"fwd": _fwd_kernel, "bwd_kv": _bwd_kv_kernel, "bwd_q": _bwd_q_kernel}[name]
        key = ["N_Q_BUCKET", "N_K_BUCKET", "HEAD_DIM", "HAS_MASK"]
        reset = ["DQ"] if name == "bwd_kv" else None  # atomic dQ must restart from zero per trial
        _TUNED[name] = triton.autotune(configs=configs, key=key, reset_to_zero=reset)(kernel)
    return _TUNED[name]


def _launch(name, kernel, cfg: LaunchConfig, blocks_of, *args, **meta):
    """Run ``kernel`` with the pinned ``cfg``, or its autotuned wrapper under RSFM_AUTOTUNE=1.

    ``blocks_of(block_m, block_n)`` gives the number of programs on grid axis 0.
    """
    if _autotune_on():
        _tuned(name)[lambda m: (blocks_of(m["BLOCK_M"], m["BLOCK_N"]),)](*args, **meta)
        return
    grid = (blocks_of(cfg.block_m, cfg.block_n),)
    kernel[grid](
        *args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta,
    )  # fmt: skip


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
    lse = torch.full((B, H, n_q), math.inf, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    if n_k == 0:
        return o.zero_(), lse
    fwd, _, _ = pinned_configs(D, q.dtype, q.device)
    mp, smb, smn = mask_args(mask, q)
    _launch(
        "fwd", _fwd_kernel, fwd, lambda bm, bn: triton.cdiv(n_q, bm) * B * H,
        q, k, v, o, lse, mp,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), smb, smn,
        H, n_q, n_k, scale * LOG2E, _bucket(n_q), _bucket(n_k),
        HEAD_DIM=D, HAS_MASK=mask is not None, BLOCK_D=block_d(D),
    )  # fmt: skip
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
    """(dQ, dK, dV). dQ: float32 atomics, or a second kernel pass when ``deterministic``."""
    if do.shape != q.shape:
        raise ValueError(
            f"attention backward: dO has shape {tuple(do.shape)}, expected {tuple(q.shape)}"
        )
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or n_k == 0 or B * H == 0:
        return torch.zeros_like(q), dk, dv
    do = do.to(q.dtype)
    _, kv_cfg, q_cfg = pinned_configs(D, q.dtype, q.device)
    bd = block_d(D)
    delta = torch.empty((B, H, n_q), dtype=torch.float32, device=q.device)
    pre_m = 16 if _INTERPRETED and q.device.type == "cpu" else 64
    _bwd_preprocess_kernel[(triton.cdiv(n_q, pre_m) * B * H,)](
        o, do, delta, *o.stride(), *do.stride(), H, n_q, HEAD_DIM=D, BLOCK_M=pre_m, BLOCK_D=bd,
    )  # fmt: skip
    mp, smb, smn = mask_args(mask, q)
    # Atomic dQ accumulates in float32 (in place when q is float32 already).
    dq = torch.zeros(q.shape, dtype=q.dtype if deterministic else torch.float32, device=q.device)
    common = dict(HEAD_DIM=D, HAS_MASK=mask is not None, BLOCK_D=bd)
    _launch(
        "bwd_kv", _bwd_kv_kernel, kv_cfg, lambda bm, bn: triton.cdiv(n_k, bn) * B * H,
        q, k, v, do, dq, dk, dv, lse, delta, mp,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(),
        *dq.stride(), *dk.stride(), *dv.stride(), smb, smn,
        H, n_q, n_k, scale * LOG2E, scale, _bucket(n_q), _bucket(n_k),
        ATOMIC_DQ=not deterministic, **common,
    )  # fmt: skip
    if deterministic:
        _launch(
            "bwd_q", _bwd_q_kernel, q_cfg, lambda bm, bn: triton.cdiv(n_q, bm) * B * H,
            q, k, v, do, dq, lse, delta, mp,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(), smb, smn,
            H, n_q, n_k, scale * LOG2E, scale, _bucket(n_q), _bucket(n_k),
            **common,
        )  # fmt: skip
    return dq.to(q.dtype), dk, dv


# ---------------------------------------------------------------- autograd + public entry


def deterministic_requested(deterministic: bool | None = None) -> bool:
    """The argument if given, else RSFM_DETERMINISTIC=1 or torch's deterministic-algorithms flag."""
    if deterministic is not None:
        return bool(deterministic)
    env = os.environ.get("RSFM_DETERMINISTIC", "0") not in ("", "0")
    return env or torch.are_deterministic_algorithms_enabled()


def select_path(n_q: int, n_k: int, path: str = "auto") -> str:
    """``"short"`` (packed) or ``"dense"`` (FlashAttention-2) for these lengths."""
    if path not in ("auto", "dense", "short"):
        raise ValueError(f"attention: path must be 'auto', 'dense' or 'short'; got {path!r}")
    if path == "short" and max(n_q, n_k) > SHORT_MAX_LEN:
        raise ValueError(
            f"attention: path='short' needs N_q, N_k <= {SHORT_MAX_LEN}; got {n_q}, {n_k}"
        )
    if path == "auto":
        return "short" if max(n_q, n_k) <= SHORT_AUTO_LEN else "dense"
    return path


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, scale, deterministic, path):
        interpret = _INTERPRETED and q.device.type == "cpu"
        if path == "short":
            o = short_forward(q, k, v, mask, scale, interpret)
            ctx.save_for_backward(q, k, v, mask)
        else:
            o, lse = dense_forward(q, k, v, mask, scale)
            ctx.save_for_backward(q, k, v, mask, o, lse)
        ctx.scale, ctx.deterministic, ctx.path, ctx.interpret = (
            scale,
            deterministic,
            path,
            interpret,
        )
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        if ctx.path == "short":
            q, k, v, mask = ctx.saved_tensors
            dq, dk, dv = short_backward(do, q, k, v, mask, ctx.scale, ctx.interpret)
        else:
            q, k, v, mask, o, lse = ctx.saved_tensors
            dq, dk, dv = dense_backward(do, q, k, v, o, lse, mask, ctx.scale, ctx.deterministic)
        return dq, dk, dv, None, None, None, None


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    deterministic: bool | None = None,
    path: str = "auto",
) -> torch.Tensor:
    """The Triton kernels directly (no dispatch). ``path``: "auto", "dense" or "short".

    ``deterministic=None`` follows RSFM_DETERMINISTIC / torch's flag (dense backward only;
    the short path never uses atomics).
    """
    mask = check_inputs(q, k, v, key_padding_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    chosen = select_path(q.shape[2], k.shape[2], path)
    return _Attention.apply(q, k, v, mask, scale, deterministic_requested(deterministic), chosen)
