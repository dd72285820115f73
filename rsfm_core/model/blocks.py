"""Pre-norm transformer blocks shared by the spatial encoder and the fusion transformer.

Attention goes through ``rsfm_kernels.attention`` (layout ``(B, H, N, D)``, key-padding
mask True = valid key, all-masked query rows give zeros), so the fused Triton backend
replaces PyTorch's without touching the model. ``backend`` is a plain attribute (not
state): :meth:`RSFMEncoder.set_attn_backend` flips it on every block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import rsfm_kernels
import torch
import torch.nn as nn
import torch.utils.checkpoint
from einops import rearrange

_HOST_CHECKS = [True]


def host_checks(t: torch.Tensor) -> bool:
    """Whether data-dependent host decisions on ``t`` cost nothing: eager mode and a CPU
    tensor (no device sync, no graph break), unless :func:`sync_free` is active."""
    return _HOST_CHECKS[0] and t.device.type == "cpu" and not torch.compiler.is_compiling()


@contextmanager
def sync_free() -> Iterator[None]:
    """Within this block the forward takes the GPU/compiled path on any device: no frame
    skipping, masks always passed (to measure or test that path on a CPU)."""
    before = _HOST_CHECKS[0]
    _HOST_CHECKS[0] = False
    try:
        yield
    finally:
        _HOST_CHECKS[0] = before


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.backend: str | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, N, D); ``mask`` (B, N), True = valid key (None: all valid)."""
        qkv = self.qkv(x)  # (B, N, 3D)
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.heads)
        o = rsfm_kernels.attention(q, k, v, key_valid=mask, backend=self.backend)
        o = rearrange(o, "b h n d -> b n (h d)")  # (B, N, D)
        return self.proj(o)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of blocks and a final LayerNorm, with optional activation checkpointing."""

    def __init__(
        self, dim: int, depth: int, heads: int, mlp_ratio: float, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.grad_checkpointing = False

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, keep: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` (B, N, D) -> (normed output (B, N, D), normed outputs of the blocks whose
        indices are in ``keep``, in ``keep`` order). Indices may be negative."""
        depth = len(self.blocks)
        bad = [i for i in keep if not -depth <= i < depth]
        if bad:
            raise IndexError(f"layer indices {bad} out of range for {depth} blocks")
        kept: list[torch.Tensor | None] = [None] * len(keep)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            if ckpt:
                x = torch.utils.checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
            for j, k in enumerate(keep):
                if k % depth == i:
                    kept[j] = self.norm(x)
        return self.norm(x), kept  # type: ignore[return-value]


def init_weights(module: nn.Module) -> None:
    """ViT/timm initialisation: normal (std 0.02) linears, zero biases. (timm truncates at
    +-2 absolute, i.e. never at std 0.02; plain ``normal_`` is the same and much faster.)"""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
