"""Attention over ``(B, H, N, D)`` with an optional key-padding mask ``(B, N_k)``.

Math: ``O = softmax(Q K^T * scale + mask_bias) V`` with ``scale = D ** -0.5`` by default;
``key_valid[b, j] = True`` means key ``j`` of batch ``b`` is valid (kept): the OPPOSITE
of ``torch.nn.MultiheadAttention``'s ``key_padding_mask`` (True = ignored). The argument
was called ``key_padding_mask`` before; that name now raises a TypeError saying so, so
that no caller keeps passing a mask whose meaning it may have inverted.
A query row whose keys are all masked returns zeros (and zero gradients), never NaN.

Triton kernels (FlashAttention-2 style, non-causal):
- forward: one program per (query block, b, h) on grid axis 0 (or a persistent grid that
  loops over them); online softmax over key blocks in float32 with the scale folded into
  ``exp2``; saves ``LSE`` (log2 units, ``+inf`` for rows with no valid key so that the
  backward's ``exp2(s - LSE)`` is exactly 0 there). Full key blocks run without bounds
  masks; only the ragged last block is masked.
- backward: ``delta = rowsum(dO * O)`` (preprocess kernel, which also zero-fills the dQ
  accumulator); dK, dV accumulated per key block over all query blocks; dQ either added
  into a float32 buffer with relaxed ``tl.atomic_add`` from the same kernel and cast at the
  end (default) or, in deterministic mode, computed by a second kernel per query block
  (no atomics; 7 instead of 5 matmuls). Deterministic mode: ``deterministic=True``,
  ``RSFM_DETERMINISTIC=1`` or ``torch.use_deterministic_algorithms(True)``.
- many short sequences (``N_q, N_k <= 64``, chosen automatically): several sequences
  packed per tile with a block-diagonal mask, one-pass backward without atomics; see
  :mod:`rsfm_kernels.attn.short`.
- both run as ``torch.library`` custom ops with fake implementations and registered
  autograd (:mod:`rsfm_kernels.attn.op`): ``torch.compile(fullgraph=True)`` keeps a call
  as one node.

Layouts: q ``(B, H, N_q, D)``, k and v ``(B, H, N_k, D)``, any strides (every stride is
passed to the kernels; stride 0 works). Output and gradients are freshly allocated,
contiguous. Dtypes: float16, bfloat16, float32 (one dtype for q, k, v); softmax statistics
and accumulators are float32. Head dims: multiples of 8 from 8 to 128 (non powers of two
are padded to the next power of two with masks).

Files: :mod:`~rsfm_kernels.attn.reference` (the spec), :mod:`~rsfm_kernels.attn.launch`
(input validation shared by the launchers), :mod:`~rsfm_kernels.attn.configs` (launch
configs per GPU family), :mod:`~rsfm_kernels.attn.dense`, :mod:`~rsfm_kernels.attn.short`
and :mod:`~rsfm_kernels.attn.op` (the Triton kernels and their custom ops, imported only
where Triton is installed, a Linux dependency: without it this package still imports, the
``triton`` backends report "triton is not installed" (``rsfm info``), and SDPA serves on
macOS and Windows), :mod:`~rsfm_kernels.attn.offline` (offline compile check); this
module holds the SDPA peer, the registration and :func:`attention`. The package is
``attn``, not ``attention``, so that ``rsfm_kernels.attention`` stays the function.

Backends (priority order): ``triton`` (10, CUDA sm80+ in fp16/bf16, or forced: float32 on
CUDA, or on CPU under ``TRITON_INTERPRET=1``), ``triton_short`` (11, the packed kernel
forced for any length up to 128), ``sdpa`` (20, PyTorch's scaled_dot_product_attention)
and ``reference`` (90, float32 math, the spec). The choice is cached per signature (see
:func:`_dispatch_key`); ``clear_dispatch_cache()`` forgets it. No xformers backend: it
would only be chosen where Triton cannot run, which SDPA (whose efficient backend is
xformers' kernel) already serves; xformers stays a benchmark peer (docs/attention.md).

Caution:
- float32 inputs use exact ("ieee") dots: accurate, but without tensor cores and with
  tiny tiles on GPU; float32 CUDA tensors go to SDPA unless ``backend="triton"``.
- Launch configs come from per-family tables checked by offline compile, and are
  autotuned on GPU (timings cached on disk; ``RSFM_AUTOTUNE=0`` pins the table config).
  Nothing has been timed on hardware yet (docs/attention.md).
- the default dQ uses float32 atomics: bitwise results can differ run to run on GPU.
- no causal mask, no dropout, no attention bias beyond the key-padding mask, no double
  backward.
- a cached choice ignores later changes of anything outside its key (e.g.
  ``TRITON_INTERPRET``); under ``torch.compile`` it is baked into the graph.

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
    from . import op as _T
else:  # macOS, Windows, or a Linux install without it: SDPA and the reference still work
    _T = None


# ---------------------------------------------------------------- peers


def _sdpa(q, k, v, key_valid=None, scale=None, deterministic=None):
    if key_valid is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    keep = key_valid[:, None, None, :].to(torch.bool)  # (B, 1, 1, M)
    # Rows with no valid key would be NaN in SDPA: give them one dummy key, zero them after.
    any_valid = keep.any(dim=-1, keepdim=True)  # (B, 1, 1, 1)
    safe = keep | ~any_valid
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, scale=scale)
    return out * any_valid.to(out.dtype)


def _reference(q, k, v, key_valid=None, scale=None, deterministic=None):
    return attention_reference(q, k, v, key_valid, scale)


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
    m = inputs.get("key_valid")
    if m is not None and (
        m.dim() != 2 or k.dim() != 4 or m.shape[0] != k.shape[0] or m.shape[1] != k.shape[2]
    ):
        out.append(
            f"key_valid must be (B, N_keys) = ({k.shape[0]}, {k.shape[2]}); got {tuple(m.shape)}"
            if k.dim() == 4
            else f"key_valid {tuple(m.shape)} does not match k {tuple(k.shape)}"
        )
    return out


def _triton_reasons(inputs, max_len: int | None = None):
    """Why the Triton kernels cannot run ``inputs``. Reads only what
    :func:`_dispatch_key` holds (devices, dtypes, ranks, head dims, whether a length
    exceeds the packed kernel's, the mask's shape): the cached choice depends on it."""
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


def _triton_auto_reasons(inputs):
    """Supported but not chosen automatically (force backend="triton" to run it)."""
    q = inputs["q"]
    if q.device.type == "cuda" and q.dtype == torch.float32:
        return [
            "float32 on CUDA goes to SDPA automatically: Triton's exact float32 dots (no "
            "tensor cores) fit only 16x16 tiles without register spills (docs/attention.md); "
            "train in bfloat16, or force backend='triton'"
        ]
    return []


def _triton(q, k, v, key_valid=None, scale=None, deterministic=None):
    return _T.triton_attention(q, k, v, key_valid, scale, deterministic)


def _triton_short(q, k, v, key_valid=None, scale=None, deterministic=None):
    return _T.triton_attention(q, k, v, key_valid, scale, deterministic, path="short")


dispatch.register(
    "attention", "triton", _triton, _triton_reasons, priority=10, auto_on_cpu=False,
    auto_reasons=_triton_auto_reasons,
    description="Triton FlashAttention-2 fwd+bwd; packed kernel when N <= 64",
)  # fmt: skip
dispatch.register(
    "attention", "triton_short", _triton_short,
    lambda inputs: _triton_reasons(inputs, SHORT_MAX_LEN), priority=11, auto_on_cpu=False,
    auto_reasons=_triton_auto_reasons,
    description="Triton packed many-short-sequences kernel (forced; N <= 128)",
)  # fmt: skip
dispatch.register(
    "attention", "sdpa", _sdpa, _shape_reasons, priority=20,
    description="torch.nn.functional.scaled_dot_product_attention",
)  # fmt: skip
dispatch.register(
    "attention", "reference", _reference, _shape_reasons, priority=90,
    description="float32 PyTorch math (the spec)",
)  # fmt: skip

# ---------------------------------------------------------------- cached dispatch

_FNS = {"triton": _triton, "triton_short": _triton_short, "sdpa": _sdpa, "reference": _reference}


def _dispatch_key(q, k, v, mask, forced: str | None) -> tuple:
    """Everything the backends' reasons read: the cache key of the choice."""
    ranks = (q.dim(), k.dim(), v.dim())
    dims = tuple(t.shape[-1] if t.dim() else -1 for t in (q, k, v))
    long = ranks == (4, 4, 4) and max(q.shape[2], k.shape[2]) > SHORT_MAX_LEN
    if mask is None:
        mask_ok = None
    else:
        mask_ok = bool(
            mask.dim() == 2 and k.dim() == 4 and tuple(mask.shape) == (k.shape[0], k.shape[2])
        )
    return (forced, q.device, k.device, v.device, q.dtype, k.dtype, v.dtype, ranks, dims,
            long, mask_ok)  # fmt: skip


def _probe(rank: int, d: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An empty tensor with the facts of the key (rank, last dim, length) for the reasons."""
    shape = (0,) * max(rank - 2, 0) + (n, d) if rank >= 2 else (max(d, 0),) * rank
    return torch.empty(shape, dtype=dtype, device=device)


@torch.compiler.assume_constant_result
def _choose(key: tuple) -> str:
    """The backend name for a dispatch key (:func:`rsfm_kernels.dispatch.choose`: selected
    once, then a dict look-up; under torch.compile made at trace time, baked into the graph)."""

    def probes() -> dict:
        _, qdev, kdev, vdev, qdt, kdt, vdt, ranks, dims, long, mask_ok = key
        nq = SHORT_MAX_LEN + 1 if long else 1
        inputs = {
            "q": _probe(ranks[0], dims[0], nq, qdt, qdev),
            "k": _probe(ranks[1], dims[1], 1, kdt, kdev),
            "v": _probe(ranks[2], dims[2], 1, vdt, vdev),
            "key_valid": None,
        }
        if mask_ok is not None:
            shape = (0, 1) if mask_ok else (1,)
            inputs["key_valid"] = torch.empty(shape, dtype=torch.bool, device=kdev)
        return inputs

    return dispatch.choose("attention", key, probes, key[0]).name


def clear_dispatch_cache() -> None:
    """Forget the cached backend choices (registering a backend does it too)."""
    dispatch.clear_choices("attention")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
    deterministic: bool | None = None,
    *,
    key_padding_mask: object = None,
) -> torch.Tensor:
    """Attention ``(B, H, N, D)`` through the dispatcher; see the module docstring.

    ``key_valid`` ``(B, N_k)`` bool: True = the key is valid and attended to (the opposite
    of ``torch.nn.MultiheadAttention``'s ``key_padding_mask``, which is True = ignored).

    ``deterministic`` (default: RSFM_DETERMINISTIC / torch's flag) only changes the Triton
    dense backward (no atomic dQ).
    """
    if key_padding_mask is not None:
        raise TypeError(
            "rk.attention: key_padding_mask was renamed key_valid (True = a valid key, "
            "attended to; torch.nn.MultiheadAttention's key_padding_mask means the "
            "opposite): pass key_valid=mask, or key_valid=~mask for a torch-style mask"
        )
    forced = dispatch.forced_backend("attention", backend)
    try:
        name = _choose(_dispatch_key(q, k, v, key_valid, forced))
    except dispatch.BackendUnavailable:  # say it with the real shapes, not the probes'
        inputs = {"q": q, "k": k, "v": v, "key_valid": key_valid}
        dispatch.select("attention", inputs, forced)
        raise
    fn = _FNS.get(name) or next(b.fn for b in dispatch.backends("attention") if b.name == name)
    return fn(q, k, v, key_valid=key_valid, scale=scale, deterministic=deterministic)


__all__ = ["attention", "attention_reference", "clear_dispatch_cache"]
