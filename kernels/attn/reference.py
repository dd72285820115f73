"""The attention spec: float32 PyTorch math with the key-padding convention of
:mod:`rsfm_kernels.attn` (True = valid key; rows with no valid key give zeros)."""

from __future__ import annotations

import torch


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The spec: float32 math, all-masked rows give zeros (and zero gradients). Returns ``q.dtype``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bhnd,bhmd->bhnm", q.float(), k.float()) * scale  # (B, H, N, M)
    if key_valid is None:
        p = torch.softmax(s, dim=-1)
    else:
        keep = key_valid[:, None, None, :].to(torch.bool)  # (B, 1, 1, M)
        any_valid = keep.any(dim=-1, keepdim=True)  # (B, 1, 1, 1)
        # Rows with no valid key get finite dummy logits, then are zeroed: no NaN, zero grads.
        s = s.masked_fill(~keep & any_valid, float("-inf"))
        p = torch.softmax(s, dim=-1) * any_valid
    return torch.einsum("bhnm,bhmd->bhnd", p, v.float()).to(q.dtype)
