"""Spectral patch embedding: per-band ``p x p -> D`` projections summed within spectral groups.

Math, for image ``b``, spectral group ``g`` and token ``n`` at patch row/column ``(i, j)``::

    xn[b, c, y, x]  = valid[b, y, x] ? (x[b, c, y, x] - mean[c]) / std[c] : 0
    out[b, g, n, :] = sum_{c : group_index[c] == g} sum_{u, v < p}
                          weight[c, :, u, v] * xn[b, c, i*p + u, j*p + v]
                      + bias[g, :] + pos[n, :]

with ``n = i * (W / p) + j`` (row-major token order). The model generates ``weight`` with
its band hypernetwork, folds any per-band scaling into it, and folds its modality and
spectral-group embeddings into ``bias``; this op is the memory-bound part: one pass over
the image, normalisation and the epilogue adds fused.

Layouts and dtypes:
    x            (BT, C, H, W)  physical values, float32/float16/bfloat16; H, W multiples of p
    weight       (C, D, p, p)   any float dtype; the output has weight.dtype
    group_index  (C,)           integer, values in [0, num_groups)
    num_groups   G              int; output groups without any band hold bias + pos only
    bias         (G, D)         optional (None: 0)
    pos          (N, D)         optional (None: 0), N = (H / p) * (W / p)
    mean, std    (C,)           optional (None: x is already normalised); both or neither
    valid        (BT, H, W)     bool, optional (None: every pixel valid). An invalid pixel
                                contributes exactly 0, whatever x holds there (NaN included)
    out          (BT, G, N, D)

Gradients flow to ``weight``, ``bias`` and ``pos`` (and to ``x`` in the reference; a fused
backend may decline ``x.requires_grad`` since model inputs are data). ``group_index``,
``mean``, ``std`` and ``valid`` are constants.

Caution: the reference loops over groups (one ``conv2d`` each) and computes in float32;
it is the spec, not the fast path. The fused Triton backend lands with the
spectral-embedding kernel issue and registers here with a higher priority.

Differences vs reference: none yet (the reference is the only backend).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch

# ---------------------------------------------------------------------------- reference


def spectral_patch_embed_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    group_index: torch.Tensor,
    num_groups: int,
    bias: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The spec: float32 math, one ``conv2d`` per spectral group. Returns ``weight.dtype``."""
    BT, C, H, W = x.shape
    _, D, p, _ = weight.shape
    h, w = H // p, W // p
    with torch.autocast(x.device.type, enabled=False):
        xf = x.float()
        if mean is not None:
            xf = (xf - mean.float().view(1, C, 1, 1)) / std.float().view(1, C, 1, 1)
        if valid is not None:
            # where, not a product: NaN under an invalid pixel must not leak into the sum
            xf = torch.where(valid[:, None].bool(), xf, xf.new_zeros(()))  # (BT, C, H, W)
        wf = weight.float()
        groups = []
        for g in range(num_groups):
            idx = (group_index == g).nonzero().squeeze(1)  # (C_g,)
            if idx.numel() == 0:
                groups.append(xf.new_zeros(BT, h * w, D))
                continue
            wg = wf.index_select(0, idx).transpose(0, 1)  # (D, C_g, p, p)
            y = F.conv2d(xf.index_select(1, idx), wg, stride=p)  # (BT, D, h, w)
            groups.append(y.flatten(2).transpose(1, 2))  # (BT, N, D)
        out = torch.stack(groups, dim=1)  # (BT, G, N, D)
        if bias is not None:
            out = out + bias.float()[None, :, None, :]  # (1, G, 1, D)
        if pos is not None:
            out = out + pos.float()[None, None]  # (1, 1, N, D)
    return out.to(weight.dtype)


# ---------------------------------------------------------------------------- launcher checks


def _shape_reasons(inputs: dispatch.Inputs | None) -> list[str]:
    """Every shape check of the op; shared by all backends (empty list: inputs are fine)."""
    if inputs is None:
        return []
    x, weight, gi, G = inputs["x"], inputs["weight"], inputs["group_index"], inputs["num_groups"]
    if x.dim() != 4 or weight.dim() != 4:
        return [
            f"x must be (BT, C, H, W) and weight (C, D, p, p); got {tuple(x.shape)}, {tuple(weight.shape)}"
        ]
    BT, C, H, W = x.shape
    Cw, D, p, p2 = weight.shape
    out = []
    if Cw != C or p != p2:
        out.append(f"weight must be (C={C}, D, p, p); got {tuple(weight.shape)}")
    if p < 1 or H % p or W % p:
        out.append(f"image {H}x{W} is not a multiple of the patch size {p}")
    if gi.dim() != 1 or gi.shape[0] != C or gi.dtype.is_floating_point:
        out.append(
            f"group_index must be an integer tensor of shape ({C},); got {tuple(gi.shape)} {gi.dtype}"
        )
    if not (isinstance(G, int) and G >= 1):
        out.append(f"num_groups must be an int >= 1; got {G!r}")
    N = (H // max(p, 1)) * (W // max(p, 1))
    expect = {"bias": (G, D), "pos": (N, D), "mean": (C,), "std": (C,), "valid": (BT, H, W)}
    for name, shape in expect.items():
        t = inputs.get(name)
        if t is not None and tuple(t.shape) != shape:
            out.append(f"{name} must be {shape}; got {tuple(t.shape)}")
    if (inputs.get("mean") is None) != (inputs.get("std") is None):
        out.append("give mean and std together (or neither)")
    return out


# ---------------------------------------------------------------------------- registration

dispatch.register(
    "spectral_embed",
    "reference",
    spectral_patch_embed_reference,
    _shape_reasons,
    priority=90,
    description="float32 PyTorch, one conv2d per spectral group (the spec)",
)


def spectral_patch_embed(
    x: torch.Tensor,
    weight: torch.Tensor,
    group_index: torch.Tensor,
    num_groups: int,
    bias: torch.Tensor | None = None,
    pos: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Spectral patch embedding ``(BT, G, N, D)`` through the dispatcher; see the module
    docstring for the math and layouts."""
    inputs = {
        "x": x,
        "weight": weight,
        "group_index": group_index,
        "num_groups": num_groups,
        "bias": bias,
        "pos": pos,
        "mean": mean,
        "std": std,
        "valid": valid,
    }
    b = dispatch.select("spectral_embed", inputs, backend)
    return b.fn(x, weight, group_index, num_groups, bias, pos, mean, std, valid)
