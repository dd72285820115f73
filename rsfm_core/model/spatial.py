"""Spatial encoder: pre-norm ViT blocks over the tokens of every frame (B*T*G frames).

Weights are shared across frames and dates. Across modalities they are either shared
(``ModelConfig.shared_spatial=True``: frames of all modalities go through one encoder in
one batch; the modality embedding added at patch embedding tells them apart) or one
encoder per modality. See docs/model.md for the measurement behind the default.

Frames without any valid token (missing dates, fully clouded frames, padding) come back
as zeros, which makes "drop a fully-invalid frame" and "mask it" equal. Invalid tokens of
a partly valid frame are masked as attention keys, so a valid token never reads cloud or
nodata.

Decision (host syncs): gathering the valid frames out before the blocks (frame skipping)
needs their indices on the host (``nonzero``), a device sync and a data-dependent shape
that ``torch.compile`` cannot trace. It is done only where it is free: tensors on the CPU
in eager mode (:func:`host_checks`), where it saves the compute of empty frames (measured
in docs/performance.md). On a GPU and under ``torch.compile`` every frame runs with its
key mask and the empty ones are zeroed by ``torch.where``: the same values, no sync.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import Transformer, host_checks
from .config import ModelConfig

SHARED = "shared"


def _run_all_frames(
    enc: Transformer, x: torch.Tensor, mask: torch.Tensor, keep: tuple[int, ...]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``enc`` on every frame with its key mask; frames without a valid token are zeroed
    (no host sync, static shapes)."""
    y, kept = enc(x, mask, keep)
    frame = mask.any(dim=1)[:, None, None]  # (F, 1, 1)
    zero = lambda t: torch.where(frame, t, torch.zeros((), dtype=t.dtype, device=t.device))  # noqa: E731
    return zero(y), [zero(t) for t in kept]


def _run_valid_frames(
    enc: Transformer, x: torch.Tensor, mask: torch.Tensor, keep: tuple[int, ...]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``enc`` on the frames of ``x`` (F, N, D) that have a valid token (``mask`` (F, N));
    the other frames (and their kept layers) are zeros. Skips the empty frames where that
    is free (:func:`host_checks`), else runs them masked and zeroes them."""
    if not host_checks(mask):
        return _run_all_frames(enc, x, mask, keep)
    idx = mask.any(dim=1).nonzero().squeeze(1)  # (F_valid,)
    zeros = lambda: x.new_zeros(x.shape)  # noqa: E731
    if idx.numel() == 0:
        return zeros(), [zeros() for _ in keep]
    xs, ms = x.index_select(0, idx), mask.index_select(0, idx)  # (F_valid, N, D), (F_valid, N)
    # Without padding the attention kernel may take its mask-free fast path.
    y, kept = enc(xs, None if bool(ms.all()) else ms, keep)
    # zeros in the output's dtype (autocast may return another dtype than it was given)
    scatter = lambda t: t.new_zeros((x.shape[0], *t.shape[1:])).index_copy(0, idx, t)  # noqa: E731
    return scatter(y), [scatter(t) for t in kept]


class SpatialEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        make = lambda: Transformer(  # noqa: E731
            config.dim, config.depth, config.heads, config.mlp_ratio, config.qkv_bias
        )
        names = [SHARED] if config.shared_spatial else list(config.modalities)
        self.shared = config.shared_spatial
        self.encoders = nn.ModuleDict({n: make() for n in names})

    def forward(
        self,
        tokens: dict[str, torch.Tensor],
        valid: dict[str, torch.Tensor],
        keep: tuple[int, ...] = (),
    ) -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]]:
        """``tokens[m]`` (F_m, N, D), ``valid[m]`` (F_m, N) -> per modality (output
        (F_m, N, D), outputs of the ``keep`` blocks)."""
        names = list(tokens)
        if not self.shared:
            return {
                m: _run_valid_frames(self.encoders[m], tokens[m], valid[m], keep) for m in names
            }
        sizes = [tokens[m].shape[0] for m in names]
        x = torch.cat([tokens[m] for m in names])  # (sum F_m, N, D)
        mask = torch.cat([valid[m] for m in names])  # (sum F_m, N)
        y, kept = _run_valid_frames(self.encoders[SHARED], x, mask, keep)
        ys = y.split(sizes)
        kept_split = [t.split(sizes) for t in kept]
        return {m: (ys[i], [ks[i] for ks in kept_split]) for i, m in enumerate(names)}
