"""Attention over ``(B, H, N, D)`` with an optional key-padding mask ``(B, N_k)``.

Math: ``O = softmax(Q K^T * scale + mask_bias) V`` with ``scale = D ** -0.5`` by default;
``key_padding_mask[b, j] = True`` means key ``j`` of batch ``b`` is valid (kept).
A query row whose keys are all masked returns zeros (and zero gradients), never NaN.

Triton kernels (FlashAttention-2 style, non-causal):
- forward: one program per (query block, b, h), flattened onto grid axis 0; online softmax
  over key blocks in float32 with the scale folded into ``exp2`` (scores are multiplied by
  ``scale * log2(e)``); saves ``LSE`` (log2 units, float32, ``+inf`` for rows with no valid
  key so that the backward's ``exp2(s - LSE)`` is exactly 0 there).
- backward: ``delta = rowsum(dO * O)`` (preprocess kernel); dK, dV accumulated per key
  block over all query blocks; dQ either accumulated in a float32 buffer with
  ``tl.atomic_add`` from the same kernel (default) or, in deterministic mode, computed by a
  second kernel per query block that loops over key blocks (no atomics; it recomputes
  ``Q K^T`` and ``dO V^T``: 7 instead of 5 matmuls, about 1.4x the backward FLOPs).
  Deterministic mode: ``deterministic=True``, ``RSFM_DETERMINISTIC=1`` or
  ``torch.use_deterministic_algorithms(True)``.
- many short sequences (``N_q, N_k <= 64``, chosen automatically): several sequences
  packed per tile with a block-diagonal mask, one-pass backward without atomics; see
  :mod:`rsfm_kernels.attn.short`.

Layouts: q ``(B, H, N_q, D)``, k and v ``(B, H, N_k, D)``, any strides (every stride is
passed to the kernels; stride 0 works). Output and gradients are freshly allocated,
contiguous. Dtypes: float16, bfloat16, float32 (one dtype for q, k, v); softmax statistics
and accumulators are float32. Head dims: multiples of 8 from 8 to 128 (non powers of two
are padded to the next power of two with masks); tuned configs exist for 32, 64, 128.

Files: :mod:`~rsfm_kernels.attn.reference` (the spec), :mod:`~rsfm_kernels.attn.launch`
(input validation shared by the launchers), :mod:`~rsfm_kernels.attn.dense` and
:mod:`~rsfm_kernels.attn.short` (the Triton kernels, imported only where Triton is
installed, a Linux dependency: without it this package still imports, the ``triton``
backends report "triton is not installed" (``rsfm info``), and SDPA serves on macOS and
Windows); this module holds the peers, the registration and :func:`attention`. The
package is ``attn``, not ``attention``, so that ``rsfm_kernels.attention`` stays the
function.

Backends (priority order): ``triton`` (10, CUDA sm80+, or forced on CPU under
``TRITON_INTERPRET=1``), ``triton_short`` (11, the packed kernel forced for any length up to
128), ``xformers`` (15, only where installed; no key-padding mask), ``sdpa`` (20, PyTorch's
scaled_dot_product_attention) and ``reference`` (90, float32 math, the spec).

Caution:
- float32 inputs use exact ("ieee") dots: accurate, but without tensor cores on GPU; train in
  bfloat16.
- Launch configs are pinned per head dim and architecture, untuned on hardware so far
  (docs/attention.md); ``RSFM_AUTOTUNE=1`` autotunes with sequence lengths bucketed to
  powers of two (ignored under the interpreter).
- the default dQ uses float32 atomics: bitwise results can differ run to run on GPU.
- no causal mask, no dropout, no attention bias beyond the key-padding mask, no double
  backward.
- the GPU paths were compiled offline for sm80/sm90 (no spills) and verified under the
  interpreter, but not yet run on a GPU (docs/attention.md lists the GPU checks to run).

Differences vs reference: the reference materialises the (N_q, N_k) matrix in float32; the
kernels never do, and feed P and dS to the tensor-core dots in the input dtype (as
FlashAttention does), so low-precision results differ from the float32 spec by rounding.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from .. import dispatch
from .launch import SHORT_MAX_LEN, SUPPORTED_DTYPES, head_dim_supported
from .reference import attention_reference

_NO_TRITON = "triton is not installed (pip install triton; Linux only)"
if importlib.util.find_spec("triton") is not None:
    from . import dense as _T
else:  # macOS, Windows, or a Linux install without it: SDPA and the reference still work
    _T = None

_XFORMERS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------- peers


def _sdpa(q, k, v, key_padding_mask=None, scale=None, deterministic=None):
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    keep = key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, M)
    # Rows with no valid key would be NaN in SDPA: give them one dummy key, zero them after.
    any_valid = keep.any(dim=-1, keepdim=True)  # (B, 1, 1, 1)
    safe = keep | ~any_valid
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, scale=scale)
    return out * any_valid.to(out.dtype)


def _xformers(q, k, v, key_padding_mask=None, scale=None, deterministic=None):
    from xformers.ops import memory_efficient_attention  # lazy: optional dependency

    out = memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
    )
    return out.transpose(1, 2)  # (B, N, H, D) -> (B, H, N, D)


def _reference(q, k, v, key_padding_mask=None, scale=None, deterministic=None):
    return attention_reference(q, k, v, key_padding_mask, scale)


# ---------------------------------------------------------------- registration


def _shape_reasons(inputs):
    if inputs is None:
        return []
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    out = []
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        out.append(
            f"q, k, v must be 4-D (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    m = inputs.get("key_padding_mask")
    if m is not None and (m.dim() != 2 or m.shape[0] != k.shape[0] or m.shape[1] != k.shape[2]):
        out.append(
            f"key_padding_mask must be (B, N_keys) = ({k.shape[0]}, {k.shape[2]}); got {tuple(m.shape)}"
        )
    return out


def _triton_reasons(inputs, max_len: int | None = None):
    if _T is None:
        return [_NO_TRITON]
    out = dispatch.backend_device_reasons(inputs)
    if inputs is None:
        return out
    out += _shape_reasons(inputs)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    out += dispatch.dtype_reasons(inputs, ("q", "k", "v"), SUPPORTED_DTYPES)
    if not (q.dtype == k.dtype == v.dtype):
        out.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dim() == 4 and k.dim() == 4 and v.dim() == 4:
        if not (q.shape[-1] == k.shape[-1] == v.shape[-1]) or not head_dim_supported(q.shape[-1]):
            out.append(
                f"head dims {q.shape[-1]}, {k.shape[-1]}, {v.shape[-1]}: need one D, a multiple of 8 in 8..128"
            )
        if max_len is not None and max(q.shape[2], k.shape[2]) > max_len:
            out.append(
                f"sequence lengths {q.shape[2]}, {k.shape[2]} exceed the packed kernel's {max_len}"
            )
    if len({t.device for t in (q, k, v)}) > 1:
        out.append(f"q, k, v on different devices: {q.device}, {k.device}, {v.device}")
    if q.device.type == "cpu":
        if dispatch.interpreter_on() and not _T._INTERPRETED:
            out.append("TRITON_INTERPRET=1 was set after rsfm_kernels was imported")
        if q.dtype == torch.bfloat16:
            out.append(
                "the Triton CPU interpreter computes bfloat16 wrongly; use float16/float32 on CPU"
            )
    out += dispatch.min_capability_reasons(inputs, 8, 0)
    return out


def _xformers_reasons(inputs):
    if importlib.util.find_spec("xformers") is None:
        return ["xformers is not installed (pip install xformers)"]
    if inputs is None:
        return [] if torch.cuda.is_available() else ["no CUDA device"]
    out = _shape_reasons(inputs)
    dev = dispatch.device_of(inputs)
    if dev is None or dev.type != "cuda":
        out.append(f"xformers needs CUDA tensors; got {dev}")
    out += dispatch.dtype_reasons(inputs, ("q", "k", "v"), _XFORMERS_DTYPES)
    if inputs.get("key_padding_mask") is not None:
        out.append("key_padding_mask is not wired to xformers here (use triton or sdpa)")
    return out


def _triton(q, k, v, key_padding_mask=None, scale=None, deterministic=None):
    return _T.triton_attention(q, k, v, key_padding_mask, scale, deterministic)


def _triton_short(q, k, v, key_padding_mask=None, scale=None, deterministic=None):
    return _T.triton_attention(q, k, v, key_padding_mask, scale, deterministic, path="short")


dispatch.register(
    "attention", "triton", _triton, _triton_reasons, priority=10, auto_on_cpu=False,
    description="Triton FlashAttention-2 fwd+bwd; packed kernel when N <= 64",
)  # fmt: skip
dispatch.register(
    "attention", "triton_short", _triton_short,
    lambda inputs: _triton_reasons(inputs, SHORT_MAX_LEN), priority=11, auto_on_cpu=False,
    description="Triton packed many-short-sequences kernel (forced; N <= 128)",
)  # fmt: skip
dispatch.register(
    "attention", "xformers", _xformers, _xformers_reasons, priority=15,
    description="xformers.ops.memory_efficient_attention (optional install)",
)  # fmt: skip
dispatch.register(
    "attention", "sdpa", _sdpa, _shape_reasons, priority=20,
    description="torch.nn.functional.scaled_dot_product_attention",
)  # fmt: skip
dispatch.register(
    "attention", "reference", _reference, _shape_reasons, priority=90,
    description="float32 PyTorch math (the spec)",
)  # fmt: skip


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
    deterministic: bool | None = None,
) -> torch.Tensor:
    """Attention ``(B, H, N, D)`` through the dispatcher; see the module docstring.

    ``deterministic`` (default: RSFM_DETERMINISTIC / torch's flag) only changes the Triton
    dense backward (no atomic dQ).
    """
    inputs = {"q": q, "k": k, "v": v, "key_padding_mask": key_padding_mask}
    b = dispatch.select("attention", inputs, backend)
    return b.fn(
        q, k, v, key_padding_mask=key_padding_mask, scale=scale, deterministic=deterministic
    )


__all__ = ["attention", "attention_reference"]
