"""Attention over ``(B, H, N, D)`` with an optional key-padding mask ``(B, N)``.

Math: ``O = softmax(Q K^T * scale + mask_bias) V`` with ``scale = D ** -0.5`` by default;
``key_padding_mask[b, j] = True`` means key ``j`` of batch ``b`` is valid (kept).
A query row whose keys are all masked returns zeros (and zero gradients), never NaN.

Backends (priority order): ``sdpa`` (PyTorch scaled_dot_product_attention) and
``reference`` (float32 math, the spec). The Triton backend lands with the attention
kernel issue and registers here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The spec: float32 math, all-masked rows give zeros. Returns ``q.dtype``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bhnd,bhmd->bhnm", q.float(), k.float()) * scale  # (B, H, N, M)
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, M)
        s = s.masked_fill(~keep, float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    else:
        p = torch.softmax(s, dim=-1)
    return torch.einsum("bhnm,bhmd->bhnd", p, v.float()).to(q.dtype)


def _sdpa(q, k, v, key_padding_mask=None, scale=None):
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    keep = key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, M)
    # Rows with no valid key would be NaN in SDPA: give them one dummy key, zero them after.
    any_valid = keep.any(dim=-1, keepdim=True)  # (B, 1, 1, 1)
    safe = keep | ~any_valid
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, scale=scale)
    return out * any_valid.to(out.dtype)


def _shape_reasons(inputs):
    if inputs is None:
        return []
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    out = []
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        out.append(f"q, k, v must be 4-D (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    m = inputs.get("key_padding_mask")
    if m is not None and (m.dim() != 2 or m.shape[0] != k.shape[0] or m.shape[1] != k.shape[2]):
        out.append(f"key_padding_mask must be (B, N_keys) = ({k.shape[0]}, {k.shape[2]}); got {tuple(m.shape)}")
    return out


dispatch.register(
    "attention", "sdpa", _sdpa, _shape_reasons, priority=20,
    description="torch.nn.functional.scaled_dot_product_attention",
)
dispatch.register(
    "attention", "reference", attention_reference, _shape_reasons, priority=90,
    description="float32 PyTorch math (the spec)",
)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention ``(B, H, N, D)`` through the dispatcher; see the module docstring."""
    inputs = {"q": q, "k": k, "v": v, "key_padding_mask": key_padding_mask}
    b = dispatch.select("attention", inputs, backend)
    return b.fn(q, k, v, key_padding_mask=key_padding_mask, scale=scale)
