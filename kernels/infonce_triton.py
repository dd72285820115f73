"""The Triton kernels behind ``rsfm_kernels.info_nce`` (backend ``triton``): launch configs,
the forward (online log-sum-exp) kernel, the two backward kernels and their launchers.
Math, layouts, dtypes, decisions and caveats: :mod:`rsfm_kernels.infonce`.

The launchers take *prepared* tensors (effective labels, 0/1 row and column weights, the
masks, the scalars on the device) built by :mod:`rsfm_kernels.infonce`; nothing here
synchronises with the host and nothing here imports the dispatcher's module, so the
custom op there owns validation and autograd.

Imported only where Triton is installed (Linux): :mod:`rsfm_kernels.infonce` keeps the
``torch`` and ``reference`` backends working without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._triton_common import INTERPRETED as _INTERPRETED
from ._triton_common import dot as _dot
from ._triton_common import gpu_arch
from ._triton_common import load_tile as _load_tile

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_LOG2E = tl.constexpr(LOG2E)  # the kernels' copies: jit code reads only constexpr globals
_LN2 = tl.constexpr(LN2)
MAX_HEAD_DIM = 256  # one (BLOCK, D) operand tile per program; larger D: the torch backend
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------- pinned launch configs


@dataclass(frozen=True)
class LaunchConfig:
    block_own: int  # rows of the output a program owns (queries, or keys for dK)
    block_loop: int  # rows of the other operand per step of its loop
    num_warps: int
    num_stages: int


# (arch, BLOCK_D) -> (forward, backward dQ, backward dK). No V and no (BLOCK, D) output
# accumulator in the forward, so its tiles can be larger than attention's; the backward
# kernels hold a float32 (block_own, D) accumulator, so block_own shrinks as D grows.
# Checked with `python -m benchmarks.infonce --compile-report` (Triton 3.9's ptxas: no
# spills, shared memory within sm90's 228 KB / sm80's 164 KB). Rejected for spilling:
# sm90/sm80 D=256 backward with 4 warps (96-344 B), sm80 D=128 dQ 128x64 (60 B). Tightest
# kept: sm90 D=256 dK (250 regs), sm80 D=128 dK (228). Not yet timed on hardware.
_C = LaunchConfig
_PINNED = {
    ("sm90", 64): (_C(128, 128, 8, 3), _C(128, 64, 8, 3), _C(128, 64, 8, 3)),
    ("sm90", 128): (_C(128, 128, 8, 3), _C(128, 64, 8, 3), _C(128, 64, 8, 3)),
    ("sm90", 256): (_C(128, 64, 8, 3), _C(64, 64, 8, 3), _C(64, 64, 8, 3)),
    ("sm80", 64): (_C(128, 128, 8, 3), _C(128, 64, 8, 3), _C(128, 64, 8, 3)),
    ("sm80", 128): (_C(128, 64, 8, 3), _C(64, 64, 8, 2), _C(128, 64, 8, 2)),
    ("sm80", 256): (_C(128, 64, 8, 2), _C(64, 32, 8, 2), _C(64, 32, 8, 2)),
}
_SMALL_SMEM = (_C(64, 64, 4, 2), _C(64, 32, 4, 2), _C(64, 32, 4, 2))  # sm86/sm89, others
_FP32 = (_C(64, 32, 4, 2), _C(32, 32, 4, 2), _C(32, 32, 4, 2))  # exact fp32 dots, 2x bytes
_INTERPRETER = (_C(64, 64, 1, 1), _C(64, 64, 1, 1), _C(64, 64, 1, 1))  # numpy per step

# Tests set this to exercise the split-loop path (partial buffers + combine) on the CPU.
SPLIT_OVERRIDE: int | None = None


def block_d(d: int) -> int:
    """The feature tile: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, 1 << (max(d, 1) - 1).bit_length())


def pinned_configs(
    d: int, dtype: torch.dtype, device: torch.device, arch: str | None = None
) -> tuple[LaunchConfig, LaunchConfig, LaunchConfig]:
    """(forward, backward dQ, backward dK) launch configs for feature dim ``d``; ``arch``
    ("sm80", "sm90") overrides the device's family (the offline compile report)."""
    if arch is None and _INTERPRETED and device.type == "cpu":
        return _INTERPRETER
    if dtype == torch.float32:
        return _FP32
    return _PINNED.get((arch or gpu_arch(device), max(64, block_d(d))), _SMALL_SMEM)


_SM_COUNT: dict[int, int] = {}


def _split(n_own_blocks: int, n_loop_blocks: int, device: torch.device) -> int:
    """How many programs share one block's loop (FlashDecoding's split): enough programs for
    about two waves when there are few owned blocks (small N), else 1 (no partial buffers)."""
    if SPLIT_OVERRIDE is not None:
        want = SPLIT_OVERRIDE
    elif device.type != "cuda":
        want = 1
    else:
        idx = device.index if device.index is not None else torch.cuda.current_device()
        if idx not in _SM_COUNT:
            _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
        sms = _SM_COUNT[idx]
        want = 1 if n_own_blocks >= sms else min(32, -(-2 * sms // n_own_blocks))
    want = max(1, min(want, n_loop_blocks))
    per = -(-n_loop_blocks // want)  # loop blocks per split
    return -(-n_loop_blocks // per)  # no empty split


# ---------------------------------------------------------------- Triton kernels


@triton.jit
def _keep(MASK, idx, ok, HAS_MASK: tl.constexpr):
    """Which rows take part: in range and (if a mask is given) valid."""
    if HAS_MASK:
        keep = tl.load(MASK + idx, mask=ok, other=0) != 0
    else:
        keep = ok
    return keep


@triton.jit
def _bracket(
    s, lse_r, cr, kkeep, lse_c, cc, qkeep, y,
    MASK_K: tl.constexpr, MASK_Q: tl.constexpr, SYM: tl.constexpr,
):  # fmt: skip
    """dL/dS up to one scalar: ``cr (P - Y) [+ cc (Pc - Y)]`` on a tile of log2-unit logits.

    Orientation-free: the caller passes the row-side vectors (``lse_r``, ``cr``, ``qkeep``)
    and column-side ones (``lse_c``, ``cc``, ``kkeep``) already broadcast to the tile.
    ``lse = +inf`` (dead rows/columns, padding) makes P exactly 0.
    """
    sk = s
    if MASK_K:
        sk = tl.where(kkeep, s, float("-inf"))
    b = cr * (tl.exp2(sk - lse_r) - y)
    if SYM:
        sq = s
        if MASK_Q:
            sq = tl.where(qkeep, s, float("-inf"))
        b += cc * (tl.exp2(sq - lse_c) - y)
    return b


_EVEN = {
    "EVEN_N": lambda a: a["N"] % a["BLOCK_M"] == 0,
    "EVEN_M": lambda a: a["M"] % a["BLOCK_N"] == 0,
    "EVEN_D": lambda a: a["D"] == a["BLOCK_D"],
}


@triton.heuristics(_EVEN)
@triton.jit
def _lse_kernel(
    X, Y, YKEEP, LAB, SC, LSE, POS,
    sxn, sxd, syn, syd, N, M, D, LOOP_PER_SPLIT,
    HAS_MASK: tl.constexpr, WITH_POS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """Per row i of X (N, D): log-sum-exp over valid rows j of Y (M, D) of (x_i . y_j) / t,
    and (WITH_POS) the logit of y_{LAB[i]}. Grid (row blocks, splits of the Y loop)."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    r_ok = rows < N
    d_ok = offs_d < D
    x_ptrs = X + rows[:, None].to(tl.int64) * sxn + offs_d[None, :] * sxd
    x = _load_tile(x_ptrs, r_ok, d_ok, EVEN_N, EVEN_D)
    scale = tl.load(SC)  # log2(e) / temperature, on the device: no host sync
    if WITH_POS:
        lab = tl.load(LAB + rows, mask=r_ok, other=-1)
    pos = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = split * LOOP_PER_SPLIT
    hi = tl.minimum(lo + LOOP_PER_SPLIT, M)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        c_ok = cols < M
        y = _load_tile(Y + cols[:, None].to(tl.int64) * syn + offs_d[None, :] * syd,
                       c_ok, d_ok, EVEN_M, EVEN_D)  # fmt: skip
        s = _dot(x, tl.trans(y)) * scale  # (BLOCK_M, BLOCK_N), log2 units
        if HAS_MASK or not EVEN_M:
            s = tl.where(_keep(YKEEP, cols, c_ok, HAS_MASK)[None, :], s, float("-inf"))
        if WITH_POS:  # the one-hot column sits in exactly one tile of the row's loop
            pos += tl.sum(tl.where(lab[:, None] == cols[None, :], s, 0.0), 1)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid key yet: no NaN
        l_i = l_i * tl.exp2(m_i - m_use) + tl.sum(tl.exp2(s - m_use[:, None]), 1)
        m_i = m_new
    empty = l_i == 0.0  # no kept row of Y: -inf (log2 of a safe 1, no warning)
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i))) * _LN2
    out = split.to(tl.int64) * N + rows
    tl.store(LSE + out, lse, mask=r_ok)
    if WITH_POS:
        tl.store(POS + out, pos * _LN2, mask=r_ok)


@triton.heuristics(_EVEN)
@triton.jit
def _grad_q_kernel(
    Q, K, LAB, CR, LSE_R, KKEEP, QKEEP, CC, LSE_C, SC, DQ, DT,
    sqn, sqd, skn, skd, sdqs, sdqn, sdqd, N, M, D, LOOP_PER_SPLIT,
    HAS_KMASK: tl.constexpr, HAS_QMASK: tl.constexpr, SYM: tl.constexpr,
    WITH_DT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """dQ for a block of queries, looping over key blocks (no atomics): recompute S, form
    the bracket, ``dQ += bracket @ K``; (WITH_DT) per-row ``sum_j bracket_ij S_ij``."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    r_ok = rows < N
    d_ok = offs_d < D
    q = _load_tile(Q + rows[:, None].to(tl.int64) * sqn + offs_d[None, :] * sqd,
                   r_ok, d_ok, EVEN_N, EVEN_D)  # fmt: skip
    scale = tl.load(SC)
    lab = tl.load(LAB + rows, mask=r_ok, other=-1)
    cr = tl.load(CR + rows, mask=r_ok, other=0.0)
    lse_r = tl.load(LSE_R + rows, mask=r_ok, other=float("inf")) * _LOG2E
    qkeep = _keep(QKEEP, rows, r_ok, HAS_QMASK)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    tacc = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = split * LOOP_PER_SPLIT
    hi = tl.minimum(lo + LOOP_PER_SPLIT, M)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        c_ok = cols < M
        k = _load_tile(K + cols[:, None].to(tl.int64) * skn + offs_d[None, :] * skd,
                       c_ok, d_ok, EVEN_M, EVEN_D)  # fmt: skip
        s = _dot(q, tl.trans(k)) * scale  # (BLOCK_M, BLOCK_N), log2 units
        kkeep = _keep(KKEEP, cols, c_ok, HAS_KMASK)
        lse_c = tl.zeros([BLOCK_N], dtype=tl.float32)
        cc = tl.zeros([BLOCK_N], dtype=tl.float32)
        if SYM:
            lse_c = tl.load(LSE_C + cols, mask=c_ok, other=float("inf")) * _LOG2E
            cc = tl.load(CC + cols, mask=c_ok, other=0.0)
        y = (lab[:, None] == cols[None, :]).to(tl.float32)
        b = _bracket(
            s, lse_r[:, None], cr[:, None], kkeep[None, :], lse_c[None, :], cc[None, :],
            qkeep[:, None], y, HAS_KMASK or not EVEN_M, HAS_QMASK or not EVEN_N, SYM,
        )  # fmt: skip
        acc += _dot(b.to(k.dtype), k)
        if WITH_DT:
            tacc += tl.sum(b * s, 1)
    out_scale = tl.load(SC + 1)
    dq_ptrs = DQ + split.to(tl.int64) * sdqs + rows[:, None].to(tl.int64) * sdqn
    dq_ptrs += offs_d[None, :] * sdqd
    tl.store(dq_ptrs, (acc * out_scale).to(DQ.dtype.element_ty), mask=r_ok[:, None] & d_ok[None, :])
    if WITH_DT:
        tl.store(DT + split.to(tl.int64) * N + rows, tacc * _LN2, mask=r_ok)


@triton.heuristics(_EVEN)
@triton.jit
def _grad_k_kernel(
    Q, K, LAB, CR, LSE_R, KKEEP, QKEEP, CC, LSE_C, SC, DK,
    sqn, sqd, skn, skd, sdks, sdkn, sdkd, N, M, D, LOOP_PER_SPLIT,
    HAS_KMASK: tl.constexpr, HAS_QMASK: tl.constexpr, SYM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """dK for a block of keys, looping over query blocks (FA2's deterministic split): the
    transposed tile ``S^T = K Q^T``, the same bracket, ``dK += bracket^T @ Q``."""
    split = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    c_ok = cols < M
    d_ok = offs_d < D
    k = _load_tile(K + cols[:, None].to(tl.int64) * skn + offs_d[None, :] * skd,
                   c_ok, d_ok, EVEN_M, EVEN_D)  # fmt: skip
    scale = tl.load(SC)
    kkeep = _keep(KKEEP, cols, c_ok, HAS_KMASK)
    lse_c = tl.zeros([BLOCK_N], dtype=tl.float32)
    cc = tl.zeros([BLOCK_N], dtype=tl.float32)
    if SYM:
        lse_c = tl.load(LSE_C + cols, mask=c_ok, other=float("inf")) * _LOG2E
        cc = tl.load(CC + cols, mask=c_ok, other=0.0)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = split * LOOP_PER_SPLIT
    hi = tl.minimum(lo + LOOP_PER_SPLIT, N)
    for start in range(lo, hi, BLOCK_M):
        rows = start + offs_m
        r_ok = rows < N
        q = _load_tile(Q + rows[:, None].to(tl.int64) * sqn + offs_d[None, :] * sqd,
                       r_ok, d_ok, EVEN_N, EVEN_D)  # fmt: skip
        lab = tl.load(LAB + rows, mask=r_ok, other=-1)
        cr = tl.load(CR + rows, mask=r_ok, other=0.0)
        lse_r = tl.load(LSE_R + rows, mask=r_ok, other=float("inf")) * _LOG2E
        qkeep = _keep(QKEEP, rows, r_ok, HAS_QMASK)
        s_t = _dot(k, tl.trans(q)) * scale  # (BLOCK_N, BLOCK_M), log2 units
        y = (cols[:, None] == lab[None, :]).to(tl.float32)
        b_t = _bracket(
            s_t, lse_r[None, :], cr[None, :], kkeep[:, None], lse_c[:, None], cc[:, None],
            qkeep[None, :], y, HAS_KMASK or not EVEN_M, HAS_QMASK or not EVEN_N, SYM,
        )  # fmt: skip
        acc += _dot(b_t.to(q.dtype), q)
    out_scale = tl.load(SC + 1)
    dk_ptrs = DK + split.to(tl.int64) * sdks + cols[:, None].to(tl.int64) * sdkn
    dk_ptrs += offs_d[None, :] * sdkd
    tl.store(dk_ptrs, (acc * out_scale).to(DK.dtype.element_ty), mask=c_ok[:, None] & d_ok[None, :])


# ---------------------------------------------------------------- launchers


def _u8(mask: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    """A bool mask as contiguous uint8 (the kernels index it with unit stride), or a dummy
    pointer when absent."""
    return dummy if mask is None else mask.contiguous().view(torch.uint8)


def _check_launch(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.device.type == "cpu" and not _INTERPRETED:
        raise RuntimeError(
            "info_nce triton backend: CPU tensors need TRITON_INTERPRET=1 set before "
            "rsfm_kernels is imported (the interpreter is for tests)"
        )
    if q.dtype != k.dtype or q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"info_nce triton backend: q and k must share one dtype of "
            f"{[str(d) for d in SUPPORTED_DTYPES]}; got {q.dtype}, {k.dtype}"
        )
    if q.shape[1] > MAX_HEAD_DIM:
        raise ValueError(
            f"info_nce triton backend: D={q.shape[1]} > {MAX_HEAD_DIM}; use backend='torch'"
        )


def lse_forward(
    x: torch.Tensor,
    y: torch.Tensor,
    y_keep: torch.Tensor | None,
    lab: torch.Tensor | None,
    sc: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row log-sum-exp of ``x @ y.T / t`` over kept rows of ``y``, float32 ``(N,)`` (``-inf``
    where no row of ``y`` is kept), and with ``lab`` (int32 ``(N,)``, -1: none) the logit at
    ``lab`` (``(N,)``). ``sc``: float32 ``[log2(e) / t, ...]`` on the device."""
    _check_launch(x, y)
    n, d = x.shape
    m = y.shape[0]
    fwd, _, _ = pinned_configs(d, x.dtype, x.device)
    bm, bn = fwd.block_own, fwd.block_loop
    split = _split(triton.cdiv(n, bm), triton.cdiv(m, bn), x.device)
    per = triton.cdiv(triton.cdiv(m, bn), split) * bn
    lse = torch.empty((split, n), dtype=torch.float32, device=x.device)
    pos = torch.empty((split, n), dtype=torch.float32, device=x.device) if lab is not None else lse
    _lse_kernel[(triton.cdiv(n, bm), split)](
        x, y, _u8(y_keep, x), lab if lab is not None else lse, sc, lse, pos,
        *x.stride(), *y.stride(), n, m, d, per,
        HAS_MASK=y_keep is not None, WITH_POS=lab is not None,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d(d),
        num_warps=fwd.num_warps, num_stages=fwd.num_stages,
    )  # fmt: skip
    if split == 1:
        return lse[0], (pos[0] if lab is not None else None)
    return torch.logsumexp(lse, 0), (pos.sum(0) if lab is not None else None)


@dataclass
class GradInputs:
    """Everything the backward kernels read besides q and k (see infonce._prepare)."""

    lab: torch.Tensor  # (N,) int32, -1 where the row has no positive
    cr: torch.Tensor  # (N,) float32 row weights (0/1)
    lse_r: torch.Tensor  # (N,) float32, +inf on dead rows
    k_keep: torch.Tensor | None  # (M,) bool
    q_keep: torch.Tensor | None  # (N,) bool (symmetric only)
    cc: torch.Tensor | None  # (M,) float32 column weights (symmetric only)
    lse_c: torch.Tensor | None  # (M,) float32, +inf on dead columns (symmetric only)
    sc: torch.Tensor  # float32 [log2(e) / t, dL/dS scale / t]


def grad_q(q: torch.Tensor, k: torch.Tensor, g: GradInputs, with_dt: bool):
    """``(dQ (N, D) in q.dtype, sum_ij bracket_ij S_ij (0-d float32) or None)``."""
    _check_launch(q, k)
    n, d = q.shape
    m = k.shape[0]
    _, cfg, _ = pinned_configs(d, q.dtype, q.device)
    bm, bn = cfg.block_own, cfg.block_loop
    split = _split(triton.cdiv(n, bm), triton.cdiv(m, bn), q.device)
    per = triton.cdiv(triton.cdiv(m, bn), split) * bn
    if split == 1:
        dq = torch.empty((1, n, d), dtype=q.dtype, device=q.device)
    else:  # float32 partials, summed below (deterministic)
        dq = torch.empty((split, n, d), dtype=torch.float32, device=q.device)
    dt = torch.empty((split, n), dtype=torch.float32, device=q.device) if with_dt else g.cr
    sym = g.cc is not None
    _grad_q_kernel[(triton.cdiv(n, bm), split)](
        q, k, g.lab, g.cr, g.lse_r, _u8(g.k_keep, q), _u8(g.q_keep, q),
        g.cc if sym else g.cr, g.lse_c if sym else g.lse_r, g.sc, dq, dt,
        *q.stride(), *k.stride(), *dq.stride(), n, m, d, per,
        HAS_KMASK=g.k_keep is not None, HAS_QMASK=sym and g.q_keep is not None, SYM=sym,
        WITH_DT=with_dt, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d(d),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    dq = dq[0] if split == 1 else dq.sum(0).to(q.dtype)
    return dq, (dt.sum() if with_dt else None)


def grad_k(q: torch.Tensor, k: torch.Tensor, g: GradInputs) -> torch.Tensor:
    """dK (M, D) in k.dtype."""
    _check_launch(q, k)
    n, d = q.shape
    m = k.shape[0]
    _, _, cfg = pinned_configs(d, q.dtype, q.device)
    bn, bm = cfg.block_own, cfg.block_loop
    split = _split(triton.cdiv(m, bn), triton.cdiv(n, bm), q.device)
    per = triton.cdiv(triton.cdiv(n, bm), split) * bm
    if split == 1:
        dk = torch.empty((1, m, d), dtype=k.dtype, device=k.device)
    else:
        dk = torch.empty((split, m, d), dtype=torch.float32, device=k.device)
    sym = g.cc is not None
    _grad_k_kernel[(triton.cdiv(m, bn), split)](
        q, k, g.lab, g.cr, g.lse_r, _u8(g.k_keep, q), _u8(g.q_keep, q),
        g.cc if sym else g.cr, g.lse_c if sym else g.lse_r, g.sc, dk,
        *q.stride(), *k.stride(), *dk.stride(), n, m, d, per,
        HAS_KMASK=g.k_keep is not None, HAS_QMASK=sym and g.q_keep is not None, SYM=sym,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d(d),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return dk[0] if split == 1 else dk.sum(0).to(k.dtype)
