"""The plain-PyTorch backend of ``rsfm_kernels.spectral_patch_embed`` (backend ``torch``):
no per-group Python loop over the compute and no device sync. Math and layouts:
:mod:`rsfm_kernels.spectral_embed`.

Two layouts of the group sum, chosen without reading device memory:

- **block** (G = 1, or ``group_index`` on a GPU): normalise + select once, one
  reshape/permute into patches ``(BT*N, C*p*p)``, one matmul against the group sum folded
  into a block weight ``(G*D, C*p*p)`` (zeros outside each group), one add of
  ``bias + pos``. No waste for G = 1; G times the useful FLOPs for G > 1 (the zero
  blocks), the price of not knowing the group sizes on the host.
- **exact** (G > 1 and ``group_index`` on the CPU, where reading it is no device sync):
  bands gathered group by group into ``(BT, G * C_max, H, W)`` (no copy when the groups
  are already contiguous and of equal size, as wavelength-sorted hyperspectral groups
  are; a zero band pads smaller groups), then ONE grouped ``conv2d`` (``groups=G``): each
  group multiplies only its own bands.

Measured on the CPU (docs/spectral_embed.md): the matmul beats a strided ``conv2d`` of the
same weight for G = 1 (p = 16 by ~3x), and for G = 8 the block layout is ~15x slower
than the per-group reference while the exact grouped conv matches or beats it.

The functions here are raw forwards/backwards: the forward records no autograd graph (it
writes its output in place); gradients come from the op's written-out backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def normalised(x, mean, std, valid, dtype: torch.dtype) -> torch.Tensor:
    """``xn`` of the op, ``(BT, C, H, W)`` in ``dtype`` (math in float32)."""
    C = x.shape[1]
    xf = x.float()
    if mean is not None:
        xf = (xf - mean.float().view(1, C, 1, 1)) / std.float().view(1, C, 1, 1)
    if valid is not None:
        xf = torch.where(valid[:, None].bool(), xf, xf.new_zeros(()))  # NaN-safe: a select
    return xf.to(dtype)


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """float32 on CPU; on CUDA the weight's dtype when it is 16-bit (tensor cores)."""
    if x.device.type == "cuda" and weight.dtype in (torch.float16, torch.bfloat16):
        return weight.dtype
    return torch.float32


# ---------------------------------------------------------------- layouts


def _patches(xn: torch.Tensor, p: int) -> torch.Tensor:
    """(BT, C, H, W) -> (BT * N, C * p * p), token-major, K ordered (c, u, v)."""
    BT, C, H, W = xn.shape
    h, w = H // p, W // p
    t = xn.reshape(BT, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5)  # (BT, h, w, C, p, p)
    return t.reshape(BT * h * w, C * p * p)


def _unpatch(dp: torch.Tensor, BT: int, C: int, H: int, W: int, p: int) -> torch.Tensor:
    """(BT * N, C * p * p) -> (BT, C, H, W), the inverse of :func:`_patches`."""
    h, w = H // p, W // p
    return dp.view(BT, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(BT, C, H, W)


def _block_weight(weight, group_index, G: int, dtype: torch.dtype) -> torch.Tensor:
    """The group sum folded into one weight: (G * D, C * p * p), zero outside each group."""
    C, D, p, _ = weight.shape
    groups = torch.arange(G, device=weight.device)
    onehot = (group_index.view(1, C) == groups.view(G, 1)).to(dtype)  # (G, C)
    wt = weight.to(dtype).reshape(C, D, p * p).transpose(0, 1)  # (D, C, p*p)
    return (onehot.view(G, 1, C, 1) * wt.unsqueeze(0)).reshape(G * D, C * p * p)


@dataclass(frozen=True)
class ExactGroups:
    """Bands gathered per group: slot ``g * cmax + s`` holds band ``index[...]`` (``C``:
    the zero padding band). ``identity``: the gather is a no-op (contiguous equal groups)."""

    index: torch.Tensor  # (G * cmax,) int64 on the tensors' device
    cmax: int
    padded: bool
    identity: bool


def exact_groups(group_index: torch.Tensor, G: int, device: torch.device) -> ExactGroups | None:
    """The exact layout from a CPU ``group_index`` (reading it is no device sync there);
    ``None`` (use the block layout) for G = 1 or a GPU ``group_index``."""
    if G == 1 or group_index.device.type != "cpu":
        return None
    gi = group_index.long()
    C = gi.numel()
    inside = (gi >= 0) & (gi < G)  # bands outside every group take part nowhere
    key = torch.where(inside, gi, G)
    counts = torch.bincount(key, minlength=G + 1)[:G]
    cmax = max(int(counts.max()), 1)
    order = torch.argsort(key, stable=True)[: int(counts.sum())]
    sg = gi[order]
    slot = torch.arange(order.numel()) - (torch.cumsum(counts, 0) - counts)[sg]
    index = torch.full((G, cmax), C, dtype=torch.long)
    index[sg, slot] = order
    index = index.flatten()
    padded = bool((index == C).any())
    identity = not padded and torch.equal(index, torch.arange(C))
    return ExactGroups(index.to(device), cmax, padded, identity)


def _gather_x(xn: torch.Tensor, ex: ExactGroups) -> torch.Tensor:
    """Bands gathered per group: (BT, G * cmax, H, W); band C (padding) is zeros."""
    if ex.padded:
        xn = F.pad(xn, (0, 0, 0, 0, 0, 1))
    return xn if ex.identity else xn.index_select(1, ex.index)


def _gather_w(weight: torch.Tensor, ex: ExactGroups, G: int) -> torch.Tensor:
    """The grouped conv weight (G * D, cmax, p, p); padding slots are zeros."""
    _, D, p, _ = weight.shape
    if ex.padded:
        weight = torch.cat([weight, weight.new_zeros(1, D, p, p)])
    wg = weight.index_select(0, ex.index).view(G, ex.cmax, D, p, p)
    return wg.transpose(1, 2).reshape(G * D, ex.cmax, p, p)


# ---------------------------------------------------------------- forward / backward


@torch.no_grad()
def forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    group_index: torch.Tensor,
    num_groups: int,
    bias: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    exact: bool | None = None,
) -> torch.Tensor:
    """``(BT, G, N, D)`` in ``weight.dtype``. ``exact``: force a layout (tests); None: auto."""
    BT, C, H, W = x.shape
    _, D, p, _ = weight.shape
    G, N = num_groups, (H // p) * (W // p)
    cd = compute_dtype(x, weight)
    ex = exact_groups(group_index, G, x.device) if exact is not False else None
    xn = normalised(x, mean, std, valid, cd)
    if ex is not None:
        y = F.conv2d(_gather_x(xn, ex), _gather_w(weight.to(cd), ex, G), stride=p, groups=G)
        y = y.view(BT, G, D, N).transpose(2, 3)  # (BT, G, N, D) view
    else:
        y = _patches(xn, p) @ _block_weight(weight, group_index, G, cd).t()  # (BT*N, G*D)
        y = y.view(BT, N, G, D).transpose(1, 2)  # (BT, G, N, D) view
    epi = None  # bias + pos, broadcast to (G, N, D)
    if bias is not None:
        epi = bias.to(cd)[:, None, :]  # (G, 1, D)
    if pos is not None:
        epi = pos.to(cd)[None] if epi is None else epi + pos.to(cd)[None]  # (G, N, D)
    out = torch.empty((BT, G, N, D), dtype=cd, device=x.device)
    if epi is None:
        out.copy_(y)
    else:
        torch.add(y, epi, out=out)  # one pass: the transpose and the adds
    return out if cd == weight.dtype else out.to(weight.dtype)


def backward(grad, x, weight, group_index, G, mean, std, valid, needs, exact=None):
    """Written-out gradients of :func:`forward`: (dx, dweight), None where not needed."""
    need_x, need_w = needs[0], needs[1]
    if not (need_x or need_w):
        return None, None
    BT, C, H, W = x.shape
    _, D, p, _ = weight.shape
    h, w = H // p, W // p
    cd = compute_dtype(x, weight)
    ex = exact_groups(group_index, G, x.device) if exact is not False else None
    xn = normalised(x, mean, std, valid, cd) if need_w else None
    dx = dw = None
    if ex is not None:
        gy = grad.to(cd).transpose(2, 3).reshape(BT, G * D, h, w)  # (BT, G*D, h, w)
        wg = _gather_w(weight.to(cd), ex, G)  # (G*D, cmax, p, p)
        rows = C + int(ex.padded)
        if need_w:
            dwg = torch.nn.grad.conv2d_weight(_gather_x(xn, ex), wg.shape, gy, stride=p, groups=G)
            dwg = dwg.view(G, D, ex.cmax, p, p).transpose(1, 2).reshape(G * ex.cmax, D, p, p)
            dw = dwg.new_zeros(rows, D, p, p).index_add_(0, ex.index, dwg)[:C]
        if need_x:
            dxg = torch.nn.grad.conv2d_input((BT, G * ex.cmax, H, W), wg, gy, stride=p, groups=G)
            dx = dxg.new_zeros(BT, rows, H, W).index_add_(1, ex.index, dxg)[:, :C]
    else:
        gy = grad.to(cd).transpose(1, 2).reshape(BT * h * w, G * D)  # (BT*N, G*D)
        if need_w:
            dwb = (gy.t() @ _patches(xn, p)).view(G, D, C, p * p)  # every (group, band) pair
            gi = group_index.long()
            inside = (gi >= 0) & (gi < G)
            pick = dwb.permute(2, 0, 1, 3)[torch.arange(C, device=x.device), gi.clamp(0, G - 1)]
            dw = (pick * inside.view(C, 1, 1).to(pick.dtype)).view(C, D, p, p)
        if need_x:
            dx = _unpatch(gy @ _block_weight(weight, group_index, G, cd), BT, C, H, W, p)
    if need_x:
        if std is not None:
            dx = dx / std.to(dx.dtype).view(1, C, 1, 1)
        if valid is not None:
            dx = torch.where(valid[:, None].bool(), dx, dx.new_zeros(()))
    return dx, dw
