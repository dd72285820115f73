"""What every attention launcher shares: supported dtypes and head dims, the length limits
of the packed short-sequence path, and input validation. No Triton import here, so the
dispatcher's reasons and the checks work where Triton is not installed.
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SHORT_AUTO_LEN = 64  # attention() uses this path when both lengths are at most this
SHORT_MAX_LEN = 128  # hard limit of the packed kernel (one tile holds a whole sequence)


def head_dim_supported(d: int) -> bool:
    return 8 <= d <= 128 and d % 8 == 0


def block_d(d: int) -> int:
    """The head-dim tile: the next power of two, at least 16."""
    return max(16, 1 << (max(d, 1) - 1).bit_length())


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None,
) -> torch.Tensor | None:
    """Every launcher's checks; returns the mask as bool (or None). Raises ValueError/TypeError."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"attention: {name} must be 4-D (B, H, N, D); got shape {tuple(t.shape)}"
            )
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if not (q.shape[0] == k.shape[0] == v.shape[0] and q.shape[1] == k.shape[1] == v.shape[1]):
        raise ValueError(f"attention: q, k, v must share B and H (dims 0, 1); got {shapes}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"attention: k and v must have the same length N_k (dim 2); got {shapes}")
    if not (q.shape[3] == k.shape[3] == v.shape[3]):
        raise ValueError(f"attention: q, k, v must share the head dim D (dim 3); got {shapes}")
    if not head_dim_supported(q.shape[3]):
        raise ValueError(
            f"attention: head dim D={q.shape[3]} is not supported by the Triton kernels "
            f"(multiples of 8 from 8 to 128); got {shapes}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"attention: q, k, v must share one dtype of {[str(d) for d in SUPPORTED_DTYPES]}; "
            f"got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(
            f"attention: q, k, v on different devices: {q.device}, {k.device}, {v.device}"
        )
    if key_valid is None:
        return None
    m = key_valid
    if m.dim() != 2 or m.shape[0] != k.shape[0] or m.shape[1] != k.shape[2]:
        raise ValueError(
            f"attention: key_valid must be (B, N_k) = ({k.shape[0]}, {k.shape[2]}); "
            f"got {tuple(m.shape)} with {shapes}"
        )
    if m.device != q.device:
        raise ValueError(f"attention: key_valid is on {m.device}, q on {q.device}")
    return m if m.dtype == torch.bool else m.to(torch.bool)


def mask_args(mask: torch.Tensor | None, dummy: torch.Tensor) -> tuple:
    """(pointer, stride_b, stride_n) for the kernels; bool is read as uint8 (same bytes)."""
    if mask is None:
        return dummy, 0, 0
    return mask.view(torch.uint8), mask.stride(0), mask.stride(1)
