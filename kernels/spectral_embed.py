"""Spectral patch embedding: per-band ``p x p -> D`` projections summed within spectral groups.

Math, for image ``b``, spectral group ``g`` and token ``n`` at patch row/column ``(i, j)``::

    xn[b, c, y, x]  = valid[b, y, x] ? (x[b, c, y, x] - mean[c]) / std[c] : 0
    out[b, g, n, :] = sum_{c : group_index[c] == g} sum_{u, v < p}
                          weight[c, :, u, v] * xn[b, c, i*p + u, j*p + v]
                      + bias[g, :] + pos[n, :]

with ``n = i * (W / p) + j`` (row-major token order). The model generates ``weight`` with
its band hypernetwork, folds any per-band scaling into it, and folds its modality and
spectral-group embeddings into ``bias``. Bands whose ``group_index`` is outside
``[0, G)`` take part in no group (and get a zero weight gradient).

Gradients (``M = BT * N`` tokens, ``g = group_index[c]``)::

    dweight[c, d, u, v] = sum_{b, n} dout[b, g, n, d] * xn[b, c, i*p + u, j*p + v]
    dbias[g, d]         = sum_{b, n} dout[b, g, n, d]
    dpos[n, d]          = sum_{b, g} dout[b, g, n, d]
    dx[b, c, y, x]      = valid ? (sum_d dout[b, g, n(y, x), d] * weight[c, d, y % p, x % p]) / std[c] : 0

Layouts and dtypes:
    x            (BT, C, H, W)  physical values, float32/float16/bfloat16, any strides;
                                H, W multiples of p
    weight       (C, D, p, p)   float32/float16/bfloat16; the output has weight.dtype
    group_index  (C,)           integer, values in [0, num_groups)
    num_groups   G              int; output groups without any band hold bias + pos only
    bias         (G, D)         optional (None: 0); any strides (the model passes an expand)
    pos          (N, D)         optional (None: 0), N = (H / p) * (W / p)
    mean, std    (C,)           optional (None: x is already normalised); both or neither
    valid        (BT, H, W)     bool, optional (None: every pixel valid). An invalid pixel
                                contributes exactly 0, whatever x holds there (NaN included)
    out          (BT, G, N, D)  contiguous
Gradients flow to ``weight``, ``bias``, ``pos`` and ``x``; ``group_index``, ``mean``,
``std`` and ``valid`` are constants.

Backends (priority order; ``spectral_patch_embed(..., backend=)`` or
``RSFM_BACKEND_SPECTRAL_EMBED`` forces one):

- ``triton`` (10; CUDA, or forced on CPU under ``TRITON_INTERPRET=1``;
  :mod:`rsfm_kernels.spectral_embed_triton`). Forward: ONE kernel, a GEMM per group with
  tokens x features tiles (``BLOCK_M x BLOCK_D``) and a K loop over (band of the group,
  chunk of ``BLOCK_K`` of the band's ``p * p`` patch pixels). Pixels are read straight
  from the NCHW image by pointer arithmetic (no unfold/im2col copy), normalised in float32
  and masked with a select in the load, multiplied in ``weight.dtype`` on tensor cores with
  float32 accumulation; bias and pos are added in the epilogue and ``(BT, G, N, D)`` is
  written once. The group sum is folded: each group's K loop visits only its bands (a
  device argsort of ``group_index`` and a searchsorted give the band lists; no host sync,
  no zero blocks). Any p works; non-powers of two run as masked K chunks over the
  flattened ``p * p`` pixels (GPU K step 32: p = 40 is 50 full chunks, p = 10 is 100
  pixels in 4 chunks, 22 % of the K lanes masked). Tokens are flattened over ``BT * N``
  so a tile spans images (no ragged tail per image).
  Weight gradient: a second Triton kernel, chosen over a torch GEMM because the GEMM
  needs an im2col copy of the normalised image and, for G > 1, either G times the FLOPs
  (a block-diagonal weight with zeros) or a per-group loop; the kernel reads pixels and
  dOut in place, visits only the band's own group and splits the long token reduction
  into float32 partials (``(splits, C, D, p*p)``, ~4 waves of programs, no atomics:
  deterministic), summed by torch. ``dbias``/``dpos`` are torch sums of dOut. The image
  gradient is declined: ``x.requires_grad`` (with grad enabled) is a reason, so the
  dispatcher picks ``torch``.
- ``torch`` (50; :mod:`rsfm_kernels.spectral_embed_torch`): plain PyTorch, no per-group
  loop over the compute and no device sync. G = 1: normalise + select once, patches
  ``(BT*N, C*p*p)`` by one reshape/permute, one matmul, one add of ``bias + pos``
  (1.4-2x the reference on CPU; faster than a strided ``conv2d`` of the same weight).
  G > 1 with ``group_index`` on the CPU: bands gathered per group (no copy for contiguous
  equal groups) and one grouped ``conv2d``; on CUDA (where reading ``group_index`` would
  sync): the group sum folded into a block weight ``(G*D, C*p*p)`` with zeros outside each
  group, one matmul, G times the useful FLOPs. Backward written out (the same GEMMs/convs
  transposed, recomputing the normalised pixels). Computes in float32 on CPU and in
  ``weight.dtype`` on CUDA for float16/bfloat16 weights.
- ``reference`` (90): float32, one ``conv2d`` per group and a ``nonzero`` per group (host
  syncs): the spec. Its backward mirrors the loop (``torch.nn.grad.conv2d_weight`` and
  ``conv2d_input`` per group).

The op is the custom op ``torch.ops.rsfm.spectral_patch_embed`` (fake implementation,
autograd and FLOP formula registered; backward ``torch.ops.rsfm.spectral_patch_embed_backward``),
so ``torch.compile(fullgraph=True)`` traces a call as one node, without graph breaks, and
fake/meta tensors and FlopCounterMode see it. In plain eager mode
:func:`spectral_patch_embed` runs the same backend functions through an
``autograd.Function`` instead (the custom op costs ~20-50 us per call in Python). The
backend is chosen at run time (inside the op under compile) and cached per (forced backend, x needs a
gradient, device, dtypes and shapes of the inputs): after the first call of a signature
the choice is one dictionary look-up (docs/spectral_embed.md has the numbers).

Offline compile (Triton 3.9's ptxas, D = 768, mask + normalisation on, ragged tiles;
``python -m benchmarks.spectral_embed --compile-report``): with the first choice, K = 64,
the forward needed 167-255 registers and the sm80 p = 10 weight gradient spilled 984 B
(each pixel of a tile carries its own 64-bit address); the pinned K = 32 gives, bf16,
forward 128 x 128 x 32 (8 warps): 128-148 registers for p in {4, 8, 16, 40} and 194
(sm90) / 238 (sm80) for p = 10, 32-36 KB shared memory; weight gradient 64 x 128 x 32:
51-118 registers, 198 for sm80 p = 10, <= 48 KB; float32 (64 x 64 x 32 forward, 32 x 64
x 32 dW) 108-255 registers. No spills anywhere; the forward pipelines its loads
(cp.async) and uses wgmma on sm90.

Caution:
- The Triton kernels were verified under the CPU interpreter (float32/float16) and compiled
  offline for sm80/sm90 (``python -m benchmarks.spectral_embed --compile-report``), not yet
  run on a GPU.
- float32 weights: the dots follow ``torch.get_float32_matmul_precision()`` ("highest":
  exact, without tensor cores, compute-bound at D = 768; "high": 3xTF32; "medium": TF32).
  The model passes float32 weights today; bfloat16 weights make the op memory-bound.
- G > 1 on CPU: the loop-free ``torch`` backend (one grouped ``conv2d``) measured 0.7-0.9x
  the reference's per-group ``conv2d`` loop (hyperspectral, G = 4 and 8; the block
  layout would be 5-20x slower); G = 1 it is 1.4-2x faster. It stays the automatic CPU
  choice (docs/spectral_embed.md has the numbers; ``backend="reference"`` forces the loop).
- ``Backend.fn`` of ``triton`` and ``torch`` are raw forwards (no autograd graph); call
  :func:`spectral_patch_embed` (the custom op) for gradients.
- Launch configs are pinned per architecture and untuned on hardware.
- No double backward.

Differences vs reference: the reference computes everything in float32. ``triton`` and
``torch`` (on CUDA) multiply in ``weight.dtype`` when it is float16/bfloat16 (normalised
pixels rounded to it, float32 accumulation); summation order differs (float32 results
agree to ~1e-5 relative).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode
from torch.utils.flop_counter import register_flop_formula

from . import dispatch
from . import spectral_embed_torch as _torch

OP = "spectral_embed"
_NO_TRITON = "triton is not installed (pip install triton; Linux only)"
if importlib.util.find_spec("triton") is not None:
    from . import spectral_embed_triton as _T
else:  # macOS, Windows, or a Linux install without it: torch and reference still work
    _T = None

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


def _reference_backward(grad, x, weight, group_index, G, mean, std, valid, needs):
    """The reference's gradients, mirroring its loop: (dx, dweight) in float32 or None."""
    need_x, need_w = needs[0], needs[1]
    BT, C, H, W = x.shape
    _, D, p, _ = weight.shape
    h, w = H // p, W // p
    xf = _torch.normalised(x, mean, std, valid, torch.float32) if need_w else None
    wf = weight.float()
    gf = grad.float()
    dx = x.new_zeros(x.shape, dtype=torch.float32) if need_x else None
    dw = torch.zeros_like(wf) if need_w else None
    for g in range(G):
        idx = (group_index == g).nonzero().squeeze(1)  # (C_g,)
        if idx.numel() == 0:
            continue
        gy = gf[:, g].transpose(1, 2).reshape(BT, D, h, w)  # (BT, D, h, w)
        if need_w:
            xg = xf.index_select(1, idx)  # (BT, C_g, H, W)
            dwg = torch.nn.grad.conv2d_weight(xg, (D, idx.numel(), p, p), gy, stride=p)
            dw[idx] = dwg.transpose(0, 1)  # (C_g, D, p, p)
        if need_x:
            wg = wf.index_select(0, idx).transpose(0, 1)  # (D, C_g, p, p)
            dx[:, idx] = torch.nn.grad.conv2d_input((BT, idx.numel(), H, W), wg, gy, stride=p)
    if need_x:
        if std is not None:
            dx = dx / std.float().view(1, C, 1, 1)
        if valid is not None:
            dx = torch.where(valid[:, None].bool(), dx, dx.new_zeros(()))
    return dx, dw


# ---------------------------------------------------------------------------- triton glue


def _triton_forward(x, weight, group_index, num_groups, bias, pos, mean, std, valid):
    prep = _T.check_and_prepare(x, weight, group_index, num_groups, mean, std, valid)
    return _T.forward(prep, weight, bias, pos)


def _triton_backward(grad, x, weight, group_index, G, mean, std, valid, needs):
    if needs[0]:
        raise NotImplementedError(
            "spectral_embed: the triton backend computes no image gradient; "
            "use backend='torch' when x requires grad"
        )
    if not needs[1]:
        return None, None
    prep = _T.check_and_prepare(x, weight, group_index, G, mean, std, valid)
    return None, _T.weight_grad(prep, grad, weight)


# ---------------------------------------------------------------------------- reasons


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
        out.append(f"image {H}x{W} is not a multiple of the patch size {p} (crop or pad it first)")
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


def _triton_reasons(inputs: dispatch.Inputs | None) -> list[str]:
    if _T is None:
        return [_NO_TRITON, *_shape_reasons(inputs)]
    out = dispatch.backend_device_reasons(inputs)
    if inputs is None:
        return out
    out += _shape_reasons(inputs)
    out += dispatch.dtype_reasons(inputs, ("x", "weight"), _T.SUPPORTED_DTYPES)
    if inputs.get("x_requires_grad"):
        out.append(
            "x requires grad: the triton backend computes no image gradient (model inputs "
            "are data); detach x, or use backend='torch'"
        )
    devices = {t.device for t in inputs.values() if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        out.append(f"inputs on different devices: {sorted(map(str, devices))}")
    x = inputs["x"]
    if x.device.type == "cpu":
        if dispatch.interpreter_on() and not _T._INTERPRETED:
            out.append("TRITON_INTERPRET=1 was set after rsfm_kernels was imported")
        if torch.bfloat16 in (x.dtype, inputs["weight"].dtype):
            out.append(
                "the Triton CPU interpreter computes bfloat16 wrongly; use float16/float32 on CPU"
            )
    out += dispatch.min_capability_reasons(inputs, 8, 0)
    return out


# ---------------------------------------------------------------------------- registration

dispatch.register(
    OP, "triton", _triton_forward, _triton_reasons, priority=10, auto_on_cpu=False,
    description="one fused Triton kernel (normalise, mask, group GEMM, bias + pos); Triton dW",
)  # fmt: skip
dispatch.register(
    OP, "torch", _torch.forward, _shape_reasons, priority=50,
    description="PyTorch, no group loop or device sync: one matmul (G=1) or grouped conv2d",
)  # fmt: skip
dispatch.register(
    OP, "reference", spectral_patch_embed_reference, _shape_reasons, priority=90,
    description="float32 PyTorch, one conv2d per spectral group (the spec)",
)  # fmt: skip

# Each backend's gradient function: (grad, x, weight, gi, G, mean, std, valid, needs)
# -> (dx, dweight) (None where not needed); dbias and dpos are shared torch sums.
_BACKWARD = {
    "triton": _triton_backward,
    "torch": _torch.backward,
    "reference": _reference_backward,
}

# The cached choice (:func:`rsfm_kernels.dispatch.choose`). Reasons are a function of what
# the key holds (forced name, whether x needs a gradient, device, shapes and dtypes), so a
# hit is exact. TRITON_INTERPRET is not in the key: Triton reads it at import.


def _meta(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (t.shape, t.dtype)


def select_backend(
    x, weight, group_index, num_groups, bias, pos, mean, std, valid, backend, x_grad
) -> dispatch.Backend:
    """The backend for these inputs: :func:`dispatch.select` once per signature, then cached."""
    forced = dispatch.forced_backend(OP, backend)
    key = (
        forced, x_grad, x.device, x.dtype, x.shape, weight.dtype, weight.shape,
        group_index.dtype, group_index.shape, num_groups, _meta(bias), _meta(pos),
        _meta(mean), _meta(std), _meta(valid),
    )  # fmt: skip

    def inputs() -> dict:
        return {
            "x": x, "weight": weight, "group_index": group_index, "num_groups": num_groups,
            "bias": bias, "pos": pos, "mean": mean, "std": std, "valid": valid,
            "x_requires_grad": x_grad,
        }  # fmt: skip

    return dispatch.choose(OP, key, inputs, forced)


def clear_backend_cache() -> None:
    """Forget the cached backend choices (registering a backend does it too)."""
    dispatch.clear_choices(OP)


# ---------------------------------------------------------------------------- custom op

_FWD_SCHEMA = (
    "(Tensor x, Tensor weight, Tensor group_index, int num_groups, Tensor? bias, Tensor? pos, "
    "Tensor? mean, Tensor? std, Tensor? valid, str? backend, bool x_grad) -> Tensor"
)
_BWD_SCHEMA = (
    "(Tensor grad, Tensor x, Tensor weight, Tensor group_index, int num_groups, Tensor? bias, "
    "Tensor? pos, Tensor? mean, Tensor? std, Tensor? valid, bool[] needs, str? backend, "
    "bool x_grad) -> (Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("rsfm::spectral_patch_embed", mutates_args=(), schema=_FWD_SCHEMA)
def _op_forward(x, weight, group_index, num_groups, bias, pos, mean, std, valid, backend, x_grad):
    b = select_backend(
        x, weight, group_index, num_groups, bias, pos, mean, std, valid, backend, x_grad
    )
    return b.fn(x, weight, group_index, num_groups, bias, pos, mean, std, valid)


@_op_forward.register_fake
def _op_forward_fake(
    x, weight, group_index, num_groups, bias, pos, mean, std, valid, backend, x_grad
):
    BT, _, H, W = x.shape
    _, D, p, _ = weight.shape
    torch._check(H % p == 0 and W % p == 0, lambda: f"image {H}x{W} is not a multiple of {p}")
    return x.new_empty((BT, num_groups, (H // p) * (W // p), D), dtype=weight.dtype)


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


def _gradients(b, grad, x, weight, group_index, G, bias, pos, mean, std, valid, needs):
    """Backend ``b``'s (dx, dweight, dbias, dpos) in the inputs' dtypes; None where not needed."""
    dx, dw = _BACKWARD[b.name](grad, x, weight, group_index, G, mean, std, valid, needs)
    db = grad.sum((0, 2), dtype=torch.float32).to(bias.dtype) if needs[2] else None
    dp = grad.sum((0, 1), dtype=torch.float32).to(pos.dtype) if needs[3] else None
    return (dx.to(x.dtype) if needs[0] else None, dw.to(weight.dtype) if needs[1] else None,
            db, dp)  # fmt: skip


@torch.library.custom_op("rsfm::spectral_patch_embed_backward", mutates_args=(), schema=_BWD_SCHEMA)
def _op_backward(
    grad, x, weight, group_index, num_groups, bias, pos, mean, std, valid, needs, backend, x_grad
):
    """(dx, dweight, dbias, dpos); an empty tensor where ``needs`` is False."""
    b = select_backend(
        x, weight, group_index, num_groups, bias, pos, mean, std, valid, backend, x_grad
    )
    grads = _gradients(b, grad, x, weight, group_index, num_groups, bias, pos, mean, std, valid,
                       needs)  # fmt: skip
    return tuple(_empty(grad) if t is None else t for t in grads)


@_op_backward.register_fake
def _op_backward_fake(
    grad, x, weight, group_index, num_groups, bias, pos, mean, std, valid, needs, backend, x_grad
):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if needs[0] else _empty(grad)
    dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
    dw = dw if needs[1] else _empty(grad)
    db = grad.new_empty(bias.shape, dtype=bias.dtype) if needs[2] else _empty(grad)
    dp = grad.new_empty(pos.shape, dtype=pos.dtype) if needs[3] else _empty(grad)
    return dx, dw, db, dp


def _setup_context(ctx, inputs, output):
    x, weight, group_index, num_groups, bias, pos, mean, std, valid, backend, x_grad = inputs
    ctx.save_for_backward(x, weight, group_index, bias, pos, mean, std, valid)
    ctx.num_groups, ctx.backend, ctx.x_grad = num_groups, backend, x_grad


def _backward(ctx, grad):
    x, weight, group_index, bias, pos, mean, std, valid = ctx.saved_tensors
    nx, nw, _, _, nb, np_ = ctx.needs_input_grad[:6]
    needs = [bool(nx), bool(nw), bool(nb), bool(np_)]
    dx, dw, db, dp = torch.ops.rsfm.spectral_patch_embed_backward(
        grad, x, weight, group_index, ctx.num_groups, bias, pos, mean, std, valid,
        needs, ctx.backend, ctx.x_grad,
    )  # fmt: skip
    pick = lambda t, need: t if need else None  # noqa: E731
    return (pick(dx, nx), pick(dw, nw), None, None, pick(db, nb), pick(dp, np_),
            None, None, None, None, None)  # fmt: skip


_op_forward.register_autograd(_backward, setup_context=_setup_context)


class _SpectralPatchEmbed(torch.autograd.Function):
    """The eager path: the same backend functions as the custom op, without its per-call
    cost (~20-50 us on this CPU vs ~10 us for an autograd.Function)."""

    @staticmethod
    def forward(ctx, b, x, weight, group_index, num_groups, bias, pos, mean, std, valid):
        ctx.save_for_backward(x, weight, group_index, bias, pos, mean, std, valid)
        ctx.b, ctx.num_groups = b, num_groups
        return b.fn(x, weight, group_index, num_groups, bias, pos, mean, std, valid)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, group_index, bias, pos, mean, std, valid = ctx.saved_tensors
        _, nx, nw, _, _, nb, np_ = ctx.needs_input_grad[:7]
        dx, dw, db, dp = _gradients(ctx.b, grad, x, weight, group_index, ctx.num_groups, bias,
                                    pos, mean, std, valid, [nx, nw, nb, np_])  # fmt: skip
        return None, dx, dw, None, None, db, dp, None, None, None


# FLOPs for torch.utils.flop_counter (the op is opaque to it): the useful GEMM work, each
# band counted in its own group, 2 * BT * N * C * p^2 * D per GEMM (forward; weight
# gradient; image gradient), whatever a backend spends on padding or zero blocks.
def _gemm_flops(x_shape, weight_shape) -> int:
    BT, C, H, W = x_shape
    _, D, p, _ = weight_shape
    return 2 * BT * (H // p) * (W // p) * C * p * p * D


@register_flop_formula(torch.ops.rsfm.spectral_patch_embed)
def _forward_flops(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return _gemm_flops(x_shape, weight_shape)


@register_flop_formula(torch.ops.rsfm.spectral_patch_embed_backward)
def _backward_flops(grad_shape, x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    needs = args[7]  # (x, weight, bias, pos)
    return _gemm_flops(x_shape, weight_shape) * (int(needs[0]) + int(needs[1]))


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
    docstring.

    Under ``torch.compile``, a dispatch mode (FlopCounterMode, FakeTensorMode) or for meta
    tensors this is the custom op ``torch.ops.rsfm.spectral_patch_embed`` (one graph node,
    fake implementation, FLOP formula); in plain eager mode the same backend functions run
    through :class:`_SpectralPatchEmbed`, which skips the custom op's per-call cost.
    """
    grad_on = torch.is_grad_enabled()
    x_grad = bool(grad_on and x.requires_grad)
    if (
        torch.compiler.is_compiling()
        or _current_dispatch_mode() is not None
        or x.device.type == "meta"
    ):
        return torch.ops.rsfm.spectral_patch_embed(
            x, weight, group_index, num_groups, bias, pos, mean, std, valid, backend, x_grad
        )
    b = select_backend(
        x, weight, group_index, num_groups, bias, pos, mean, std, valid, backend, x_grad
    )
    args = (x, weight, group_index, num_groups, bias, pos, mean, std, valid)
    if grad_on and (
        x_grad
        or weight.requires_grad
        or (bias is not None and bias.requires_grad)
        or (pos is not None and pos.requires_grad)
    ):
        return _SpectralPatchEmbed.apply(b, *args)
    return b.fn(*args)
