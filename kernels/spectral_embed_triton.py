"""The Triton kernels behind ``rsfm_kernels.spectral_patch_embed`` (backend ``triton``):
pinned launch configs, the fused forward and the weight-gradient kernel, their launchers.
Math, layouts, dtypes, caveats and the offline compile results: :mod:`rsfm_kernels.spectral_embed`.

Imported only where Triton is installed (Linux): :mod:`rsfm_kernels.spectral_embed` keeps
the ``torch`` and ``reference`` backends working without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._triton_common import INTERPRETED as _INTERPRETED
from ._triton_common import gpu_arch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# ---------------------------------------------------------------- pinned launch configs


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int  # tokens per tile
    block_d: int  # output features per tile
    block_k: int  # pixels of one band's patch per K step (at most; fewer for small p)
    num_warps: int
    num_stages: int


# (arch, operand bytes) -> (forward, weight gradient). Starting point: a bf16 GEMM tile
# 128 x 128 x 64 (forward: tokens x features x pixels); the offline compile
# (`python -m benchmarks.spectral_embed --compile-report`) showed 167-255 registers with
# K = 64 (sm80 p = 10: 984 B spilled in dW), because every pixel of a tile carries its
# own 64-bit address (pointer arithmetic on an NCHW patch, no block pointers); K = 32
# halves that: 128-148 registers for p in {4, 8, 16, 40}, 194-238 for p = 10, no spills,
# shared memory <= 48 KB. The weight gradient is a GEMM with a long reduction over tokens
# and a small (pixels x features) output: 32 x 128 tiles over 64 tokens per step, split
# over tokens. Not yet timed on hardware (no GPU in the sessions that wrote them).
_C = LaunchConfig
_PINNED = {
    ("sm90", 2): (_C(128, 128, 32, 8, 3), _C(64, 128, 32, 8, 3)),
    ("sm80", 2): (_C(128, 128, 32, 8, 3), _C(64, 128, 32, 4, 3)),
    ("other", 2): (_C(64, 128, 32, 4, 2), _C(64, 64, 32, 4, 2)),
}
_FP32 = (_C(64, 64, 32, 4, 2), _C(32, 64, 32, 4, 2))  # float32 dots: 2x the bytes per tile
_INTERPRETER = (_C(32, 32, 64, 1, 1), _C(32, 32, 64, 1, 1))  # numpy: few, larger steps


def pinned_configs(
    weight_dtype: torch.dtype, device: torch.device
) -> tuple[LaunchConfig, LaunchConfig]:
    """(forward, weight gradient) launch configs; the dots run in ``weight_dtype``."""
    if _INTERPRETED and device.type == "cpu":
        return _INTERPRETER
    if weight_dtype == torch.float32:
        return _FP32
    return _PINNED.get((gpu_arch(device), 2), _PINNED[("other", 2)])


def next_pow2(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()


def block_k(p: int, cfg: LaunchConfig) -> int:
    """K step over one band's ``p * p`` pixels: a power of two >= 16 (tl.dot's minimum)."""
    return max(16, min(next_pow2(p * p), cfg.block_k))


def block_d(d: int, cfg: LaunchConfig) -> int:
    return max(16, min(next_pow2(d), cfg.block_d))


def f32_precision() -> str:
    """``tl.dot`` precision for float32 weights, after torch's matmul setting: "highest"
    -> exact ("ieee"), "high" -> 3xTF32 (about float32 accuracy), "medium" -> TF32."""
    return {"highest": "ieee", "high": "tf32x3", "medium": "tf32"}.get(
        torch.get_float32_matmul_precision(), "ieee"
    )


# ---------------------------------------------------------------- Triton kernels


@triton.jit
def _token_coords(offs_m, N, WT, P: tl.constexpr):
    """Flattened token index (over BT * N) -> (image b, token n, first pixel row, column)."""
    b = offs_m // N
    n = offs_m % N
    return b, n, (n // WT) * P, (n % WT) * P


@triton.jit
def _load_band_tile(
    X, VALID, MEAN, ISTD, c, x_tok, v_tok, u, v, m_ok, k_ok,
    sxc, sxh, sxw, svh, svw,
    HAS_NORM: tl.constexpr, HAS_VALID: tl.constexpr, EVEN_M: tl.constexpr, EVEN_K: tl.constexpr,
):  # fmt: skip
    """Normalised, masked pixels ``(BLOCK_M tokens, BLOCK_K pixels)`` of band ``c``, float32.

    Invalid pixels become 0 through a select, so a NaN stored under one never leaks.
    Out-of-range rows/columns load as 0 (finite); callers zero them through the other
    operand (weight rows past ``p * p``, dOut rows past the last token).
    """
    ptrs = X + c.to(tl.int64) * sxc + x_tok[:, None] + (u * sxh + v * sxw)[None, :]
    vptrs = VALID + v_tok[:, None] + (u * svh + v * svw)[None, :]
    if EVEN_M and EVEN_K:
        xv = tl.load(ptrs).to(tl.float32)
    else:
        xv = tl.load(ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
    if HAS_NORM:
        xv = (xv - tl.load(MEAN + c)) * tl.load(ISTD + c)
    if HAS_VALID:
        if EVEN_M and EVEN_K:
            ok = tl.load(vptrs) != 0
        else:
            ok = tl.load(vptrs, mask=m_ok[:, None] & k_ok[None, :], other=0) != 0
        xv = tl.where(ok, xv, 0.0)
    return xv


@triton.heuristics(
    {
        "EVEN_M": lambda a: a["M"] % a["BLOCK_M"] == 0,
        "EVEN_D": lambda a: a["D"] % a["BLOCK_D"] == 0,
        "EVEN_K": lambda a: (a["P"] * a["P"]) % a["BLOCK_K"] == 0,
    }
)
@triton.jit
def _fwd_kernel(
    X, W, ORDER, STARTS, MEAN, ISTD, VALID, BIAS, POS, OUT,
    sxb, sxc, sxh, sxw, swc, swd, swu, swv, svb, svh, svw, sbg, sbd, spn, spd,
    sob, sog, son, sod,
    M, N, D, WT,
    P: tl.constexpr, NCH: tl.constexpr, PRECISION: tl.constexpr,
    HAS_NORM: tl.constexpr, HAS_VALID: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_POS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_D: tl.constexpr, EVEN_K: tl.constexpr,
):  # fmt: skip
    """One (token block, feature block, group) tile: acc = sum over the group's bands and
    their patch pixels of xn @ W, then + bias + pos, stored once."""
    # feature blocks of one token block are neighbours: their pixels come from L2
    pid = tl.program_id(0)
    n_d = tl.cdiv(D, BLOCK_D)
    n_m = tl.cdiv(M, BLOCK_M)
    d_blk = pid % n_d
    m_blk = (pid // n_d) % n_m
    g = pid // (n_d * n_m)
    offs_m = m_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = d_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    d_ok = offs_d < D
    b, n, y0, x0 = _token_coords(offs_m, N, WT, P)
    b64 = b.to(tl.int64)
    x_tok = b64 * sxb + y0.to(tl.int64) * sxh + x0.to(tl.int64) * sxw  # (BLOCK_M,)
    v_tok = b64 * svb + y0.to(tl.int64) * svh + x0.to(tl.int64) * svw
    w_d = offs_d[None, :] * swd

    lo = tl.load(STARTS + g)  # the group's bands: ORDER[lo:hi]
    hi = tl.load(STARTS + g + 1)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for t in range(lo * NCH, hi * NCH):  # (band, pixel chunk) steps of this group
        c = tl.load(ORDER + t // NCH)
        k = (t % NCH) * BLOCK_K + offs_k
        u = k // P
        v = k % P
        k_ok = k < P * P
        xv = _load_band_tile(
            X, VALID, MEAN, ISTD, c, x_tok, v_tok, u, v, m_ok, k_ok, sxc, sxh, sxw, svh, svw,
            HAS_NORM, HAS_VALID, EVEN_M, EVEN_K,
        )  # fmt: skip
        w_ptrs = W + c.to(tl.int64) * swc + (u * swu + v * swv)[:, None] + w_d
        if EVEN_K and EVEN_D:
            w = tl.load(w_ptrs)
        else:  # rows past p * p must be 0: they meet padded pixel columns
            w = tl.load(w_ptrs, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(xv.to(w.dtype), w, acc, input_precision=PRECISION)

    if HAS_BIAS:
        acc += tl.load(BIAS + g * sbg + offs_d * sbd, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    io_ok = m_ok[:, None] & d_ok[None, :]
    if HAS_POS:
        pos = tl.load(POS + n[:, None] * spn + offs_d[None, :] * spd, mask=io_ok, other=0.0)
        acc += pos.to(tl.float32)
    o_ptrs = OUT + b64[:, None] * sob + g * sog + n[:, None] * son + offs_d[None, :] * sod
    if EVEN_M and EVEN_D:
        tl.store(o_ptrs, acc.to(OUT.dtype.element_ty))
    else:
        tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=io_ok)


@triton.heuristics(
    {
        "EVEN_D": lambda a: a["D"] % a["BLOCK_D"] == 0,
        "EVEN_K": lambda a: (a["P"] * a["P"]) % a["BLOCK_K"] == 0,
    }
)
@triton.jit
def _dw_kernel(
    X, GI, MEAN, ISTD, VALID, DOUT, PART,
    sxb, sxc, sxh, sxw, svb, svh, svw, sdb, sdg, sdn, sdd,
    M, N, D, WT, G, C, M_PER_SPLIT,
    P: tl.constexpr, NCH: tl.constexpr, PRECISION: tl.constexpr,
    HAS_NORM: tl.constexpr, HAS_VALID: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_K: tl.constexpr,
):  # fmt: skip
    """dW[c, d, u, v] partial over one token range: sum_m xn[m, c, (u, v)] * dOut[m, g(c), d].

    One program per (band, pixel chunk) x feature block x token split; writes its float32
    partial to PART[split] (no atomics: deterministic; the launcher sums the splits).
    """
    pid_k = tl.program_id(0)
    c = pid_k // NCH
    k = (pid_k % NCH) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    split = tl.program_id(2)
    u = k // P
    v = k % P
    k_ok = k < P * P
    d_ok = offs_d < D
    g = tl.load(GI + c)
    g_ok = (g >= 0) & (g < G)  # a band outside every group gets a zero gradient
    g = tl.where(g_ok, g, 0).to(tl.int64)
    m_lo = split * M_PER_SPLIT
    m_hi = tl.minimum(M, m_lo + M_PER_SPLIT)
    m_hi = tl.where(g_ok, m_hi, m_lo)
    offs = tl.arange(0, BLOCK_M)

    acc = tl.zeros([BLOCK_K, BLOCK_D], dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        offs_m = m0 + offs
        m_ok = offs_m < m_hi
        b, n, y0, x0 = _token_coords(offs_m, N, WT, P)
        b64 = b.to(tl.int64)
        x_tok = b64 * sxb + y0.to(tl.int64) * sxh + x0.to(tl.int64) * sxw
        v_tok = b64 * svb + y0.to(tl.int64) * svh + x0.to(tl.int64) * svw
        xv = _load_band_tile(
            X, VALID, MEAN, ISTD, c, x_tok, v_tok, u, v, m_ok, k_ok, sxc, sxh, sxw, svh, svw,
            HAS_NORM, HAS_VALID, False, EVEN_K,
        )  # fmt: skip
        do_ptrs = DOUT + b64[:, None] * sdb + g * sdg + n[:, None] * sdn + offs_d[None, :] * sdd
        # rows past the split's last token must be 0: they meet finite but unused pixels
        do = tl.load(do_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(xv.to(do.dtype)), do, acc, input_precision=PRECISION)

    PP: tl.constexpr = P * P
    p_ptrs = PART + (split * C + c).to(tl.int64) * D * PP + offs_d[None, :] * PP + k[:, None]
    if EVEN_K and EVEN_D:
        tl.store(p_ptrs, acc)
    else:
        tl.store(p_ptrs, acc, mask=k_ok[:, None] & d_ok[None, :])


# ---------------------------------------------------------------- launchers


@dataclass(frozen=True)
class Prepared:
    """Launcher-checked inputs in the kernels' forms (built by :func:`prepare`)."""

    x: torch.Tensor  # (BT, C, H, W) any strides
    group_index: torch.Tensor  # (C,) as given
    order: torch.Tensor  # (C,) int32: bands sorted by group (stable)
    starts: torch.Tensor  # (G + 1,) int32: group g's bands are order[starts[g]:starts[g+1]]
    mean: torch.Tensor | None  # (C,) float32
    istd: torch.Tensor | None  # (C,) float32, 1 / std
    valid: torch.Tensor | None  # (BT, H, W) uint8 view of the bool mask
    num_groups: int
    p: int


def check_and_prepare(
    x: torch.Tensor,
    weight: torch.Tensor,
    group_index: torch.Tensor,
    num_groups: int,
    mean: torch.Tensor | None,
    std: torch.Tensor | None,
    valid: torch.Tensor | None,
) -> Prepared:
    """Every check of the Triton launchers (ValueError/TypeError naming the input), and the
    small per-call tensors the kernels read. No host sync: the band lists come from a
    device argsort and searchsorted."""
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"spectral_embed: x must be (BT, C, H, W) and weight (C, D, p, p); "
            f"got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    BT, C, H, W = x.shape
    Cw, D, p, p2 = weight.shape
    if Cw != C or p != p2 or p < 1:
        raise ValueError(
            f"spectral_embed: weight must be (C={C}, D, p, p); got {tuple(weight.shape)}"
        )
    if H % p or W % p:
        raise ValueError(
            f"spectral_embed: image {H}x{W} is not a multiple of the patch size {p}; "
            "crop or pad it to a multiple of p first"
        )
    for name, t in (("x", x), ("weight", weight)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"spectral_embed: {name} has dtype {t.dtype}; the Triton kernels take "
                f"{[str(d) for d in SUPPORTED_DTYPES]}"
            )
    if group_index.shape != (C,) or group_index.dtype.is_floating_point:
        raise ValueError(
            f"spectral_embed: group_index must be an integer ({C},) tensor; "
            f"got {group_index.dtype} {tuple(group_index.shape)}"
        )
    if (mean is None) != (std is None):
        raise ValueError("spectral_embed: give mean and std together (or neither)")
    for name, t in (("group_index", group_index), ("weight", weight), ("mean", mean),
                    ("std", std), ("valid", valid)):  # fmt: skip
        if t is not None and t.device != x.device:
            raise ValueError(f"spectral_embed: {name} is on {t.device}, x on {x.device}")
    if valid is not None:
        if valid.shape != (BT, H, W):
            raise ValueError(
                f"spectral_embed: valid must be (BT, H, W) = {(BT, H, W)}; got {tuple(valid.shape)}"
            )
        valid = (valid if valid.dtype == torch.bool else valid != 0).view(torch.uint8)
    gi = group_index.to(torch.int64)
    sorted_gi, order = torch.sort(gi, stable=True)
    bounds = torch.arange(num_groups + 1, device=x.device, dtype=torch.int64)
    starts = torch.searchsorted(sorted_gi, bounds).to(torch.int32)
    if mean is not None:
        mean = mean.to(torch.float32).contiguous()
        std = (1.0 / std.to(torch.float32)).contiguous()
    return Prepared(
        x, gi.to(torch.int32), order.to(torch.int32), starts, mean, std, valid, num_groups, p
    )


def _valid_args(prep: Prepared) -> tuple:
    if prep.valid is None:
        return prep.x, 0, 0, 0  # never read (HAS_VALID=False)
    return prep.valid, *prep.valid.stride()


def forward(
    prep: Prepared,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos: torch.Tensor | None,
) -> torch.Tensor:
    """The fused forward: ``(BT, G, N, D)`` in ``weight.dtype``."""
    x, G, p = prep.x, prep.num_groups, prep.p
    BT, C, H, W = x.shape
    D = weight.shape[1]
    h, w = H // p, W // p
    N, M = h * w, BT * h * w
    if bias is not None and bias.shape != (G, D):
        raise ValueError(f"spectral_embed: bias must be (G, D) = {(G, D)}; got {tuple(bias.shape)}")
    if pos is not None and pos.shape != (N, D):
        raise ValueError(f"spectral_embed: pos must be (N, D) = {(N, D)}; got {tuple(pos.shape)}")
    out = torch.empty((BT, G, N, D), dtype=weight.dtype, device=x.device)
    if out.numel() == 0:
        return out
    cfg, _ = pinned_configs(weight.dtype, x.device)
    bk, bd = block_k(p, cfg), block_d(D, cfg)
    valid, svb, svh, svw = _valid_args(prep)
    dummy = out
    grid = (triton.cdiv(D, bd) * triton.cdiv(M, cfg.block_m) * G,)
    _fwd_kernel[grid](
        x, weight, prep.order, prep.starts,
        prep.mean if prep.mean is not None else dummy, prep.istd if prep.istd is not None else dummy,
        valid, bias if bias is not None else dummy, pos if pos is not None else dummy, out,
        *x.stride(), *weight.stride(), svb, svh, svw,
        *(bias.stride() if bias is not None else (0, 0)),
        *(pos.stride() if pos is not None else (0, 0)),
        *out.stride(),
        M, N, D, w,
        P=p, NCH=triton.cdiv(p * p, bk), PRECISION=f32_precision(),
        HAS_NORM=prep.mean is not None, HAS_VALID=prep.valid is not None,
        HAS_BIAS=bias is not None, HAS_POS=pos is not None,
        BLOCK_M=cfg.block_m, BLOCK_D=bd, BLOCK_K=bk,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def weight_grad(prep: Prepared, dout: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dW ``(C, D, p, p)`` in ``weight.dtype``: float32 partials over token splits, summed."""
    x, G, p = prep.x, prep.num_groups, prep.p
    BT, C, H, W = x.shape
    D = weight.shape[1]
    h, w = H // p, W // p
    N, M = h * w, BT * h * w
    if dout.shape != (BT, G, N, D):
        raise ValueError(
            f"spectral_embed backward: dOut has shape {tuple(dout.shape)}, expected {(BT, G, N, D)}"
        )
    if M == 0 or C == 0 or D == 0:
        return torch.zeros_like(weight)
    dout = dout.to(weight.dtype)
    _, cfg = pinned_configs(weight.dtype, x.device)
    bk, bd = block_k(p, cfg), block_d(D, cfg)
    nch = triton.cdiv(p * p, bk)
    tiles = C * nch * triton.cdiv(D, bd)
    m_blocks = triton.cdiv(M, cfg.block_m)
    # enough programs for ~4 waves; each split's float32 partial is one dW, so the
    # buffer stays ~(4 * SMs * BLOCK_K * BLOCK_D * 4 B) however large dW is
    splits = max(1, min(m_blocks, triton.cdiv(4 * _num_sms(x.device), tiles)))
    m_per_split = triton.cdiv(m_blocks, splits) * cfg.block_m
    splits = triton.cdiv(M, m_per_split)
    part = torch.empty((splits, C, D, p * p), dtype=torch.float32, device=x.device)
    valid, svb, svh, svw = _valid_args(prep)
    dummy = part
    _dw_kernel[(C * nch, triton.cdiv(D, bd), splits)](
        x, prep.group_index,
        prep.mean if prep.mean is not None else dummy, prep.istd if prep.istd is not None else dummy,
        valid, dout, part,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), svb, svh, svw, *dout.stride(),
        M, N, D, w, G, C, m_per_split,
        P=p, NCH=nch, PRECISION=f32_precision(),
        HAS_NORM=prep.mean is not None, HAS_VALID=prep.valid is not None,
        BLOCK_M=cfg.block_m, BLOCK_D=bd, BLOCK_K=bk,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    dw = part[0] if splits == 1 else part.sum(0)  # (C, D, p*p)
    return dw.view(C, D, p, p).to(weight.dtype)
