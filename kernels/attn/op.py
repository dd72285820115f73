"""The Triton attention kernels as ``torch.library`` custom ops, with fake (meta)
implementations and registered autograd, and :func:`triton_attention`, their direct entry.

``rsfm_kernels::attention_fwd(q, k, v, mask, scale, deterministic, path) -> (O, LSE)`` and
``rsfm_kernels::attention_bwd(dO, q, k, v, O, LSE, mask, scale, deterministic, path) ->
(dQ, dK, dV)``; ``path`` is "dense" (FlashAttention-2, :mod:`~rsfm_kernels.attn.dense`) or
"short" (packed, :mod:`~rsfm_kernels.attn.short`; LSE is then an empty tensor). As opaque
ops ``torch.compile(fullgraph=True)`` traces a call as one node instead of breaking the
graph, and FakeTensor shape propagation needs no kernel. No double backward.

Imported only where Triton is installed.
"""

from __future__ import annotations

import os

import torch

from .._triton_common import INTERPRETED as _INTERPRETED
from .dense import dense_backward, dense_forward
from .launch import SHORT_AUTO_LEN, SHORT_MAX_LEN, check_inputs
from .short import short_backward, short_forward


def _interpret(t: torch.Tensor) -> bool:
    return _INTERPRETED and t.device.type == "cpu"


@torch.library.custom_op("rsfm_kernels::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    deterministic: bool,
    path: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, LSE (B, H, N_q) float32 log2 units; empty for the short path). ``mask``: bool.
    ``deterministic`` does not change the forward; it is kept for the backward."""
    if path == "short":
        o = short_forward(q, k, v, mask, scale, _interpret(q))
        return o, q.new_empty((0,), dtype=torch.float32)  # no LSE: one tile per sequence
    return dense_forward(q, k, v, mask, scale)


@attention_fwd.register_fake
def _(q, k, v, mask, scale, deterministic, path):
    lse_shape = (0,) if path == "short" else q.shape[:3]
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=torch.float32)


@torch.library.custom_op("rsfm_kernels::attention_bwd", mutates_args=())
def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    deterministic: bool,
    path: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dQ, dK, dV) in the input dtype."""
    if path == "short":
        return short_backward(do, q, k, v, mask, scale, _interpret(q))
    return dense_backward(do, q, k, v, o, lse, mask, scale, deterministic)


@attention_bwd.register_fake
def _(do, q, k, v, o, lse, mask, scale, deterministic, path):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, scale, deterministic, path = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, mask, o, lse)
    ctx.scale, ctx.deterministic, ctx.path = scale, deterministic, path
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, _dlse):
    q, k, v, mask, o, lse = ctx.saved_tensors
    dq, dk, dv = attention_bwd(do, q, k, v, o, lse, mask, ctx.scale, ctx.deterministic, ctx.path)
    return dq, dk, dv, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- direct entry


@torch.compiler.assume_constant_result
def deterministic_requested(deterministic: bool | None = None) -> bool:
    """The argument if given, else RSFM_DETERMINISTIC=1 or torch's deterministic-algorithms
    flag. Under torch.compile the answer is taken at trace time."""
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


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
    deterministic: bool | None = None,
    path: str = "auto",
) -> torch.Tensor:
    """The Triton kernels directly (no dispatch). ``path``: "auto", "dense" or "short".

    ``deterministic=None`` follows RSFM_DETERMINISTIC / torch's flag (dense backward only;
    the short path never uses atomics).
    """
    mask = check_inputs(q, k, v, key_valid)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    chosen = select_path(q.shape[2], k.shape[2], path)
    det = deterministic_requested(deterministic)
    return attention_fwd(q, k, v, mask, scale, det, chosen)[0]
