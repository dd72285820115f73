"""Temporal/multimodal fusion: a transformer over each token location's sequence.

At every location the sequence holds that location's tokens from all frames (and
spectral groups) of all modalities, plus a learned fusion token in front:
``L = 1 + sum_m T_m * G_m`` (4..64 in practice), and there are ``B * h * w`` sequences,
the attention kernel's many-short-sequences path. Each token gets a date encoding
(day-of-year harmonics + year), a modality embedding and, for grouped modalities, a
spectral-group embedding. Invalid tokens (and whole missing frames) are masked keys.

Decisions:
- No temporal position other than the date encoding: the fused output does not depend
  on the order of the frames, only on their dates (tested).
- The fusion token is always a valid key, so a location without any valid input still
  gets a finite row; the encoder flags it (``valid=False``) and zeroes it.
- Day-of-year is the phase ``frac(days / 365.2425)`` (off by < 1 day from the calendar
  day-of-year, with no calendar lookup); the year term is ``(year - 2020) / 10``,
  continuous, so there is no jump at New Year.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange

from .blocks import Transformer, host_checks
from .config import ModelConfig

DAYS_PER_YEAR = 365.2425


def date_features(days: torch.Tensor, freqs: int) -> torch.Tensor:
    """``days`` since 1970-01-01 (B, T) -> (B, T, 2 * freqs + 1): sin/cos of the first
    ``freqs`` day-of-year harmonics, then (year - 2020) / 10."""
    years = days.to(torch.float64) / DAYS_PER_YEAR  # (B, T); float64: exact phase
    phase = years - years.floor()
    k = torch.arange(1, freqs + 1, device=days.device, dtype=torch.float64)
    ang = 2 * math.pi * phase[..., None] * k  # (B, T, F)
    year = (years + 1970.0 - 2020.0)[..., None] / 10.0  # (B, T, 1)
    return torch.cat([ang.sin(), ang.cos(), year], dim=-1).float()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (..., L, D) over the L entries where ``mask`` (..., L) is True; 0 if none."""
    w = mask.to(x.dtype)[..., None]  # (..., L, 1)
    return (x * w).sum(-2) / w.sum(-2).clamp_min(1.0)


class FusionEncoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D = config.dim
        self.config = config
        self.fusion_token = nn.Parameter(torch.zeros(D))
        self.modality_index = {name: i for i, name in enumerate(config.modalities)}
        self.modality_embed = nn.Parameter(torch.zeros(len(config.modalities), D))
        self.group_embed = nn.ParameterDict(
            {
                name: nn.Parameter(torch.zeros(m.groups, D))
                for name, m in config.modalities.items()
                if m.groups > 1
            }
        )
        self.date_embed = nn.Linear(2 * config.date_freqs + 1, D)
        self.transformer = Transformer(
            D, config.fusion_depth, config.heads, config.mlp_ratio, config.qkv_bias
        )

    def reset_parameters(self) -> None:
        for p in (self.fusion_token, self.modality_embed, *self.group_embed.values()):
            nn.init.normal_(p, std=0.02)

    def _sequence(
        self, name: str, x: torch.Tensor, valid: torch.Tensor, dates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One modality's tokens x (B, T, G, N, D) -> (B, N, T*G, D) with embeddings added."""
        feat = date_features(dates, self.config.date_freqs).to(self.date_embed.weight.dtype)
        date = self.date_embed(feat)  # (B, T, D)
        x = x + date[:, :, None, None, :] + self.modality_embed[self.modality_index[name]]
        if name in self.group_embed:
            x = x + self.group_embed[name][None, None, :, None, :]  # (1, 1, G, 1, D)
        x = rearrange(x, "b t g n d -> b n (t g) d")
        valid = rearrange(valid, "b t g n -> b n (t g)")
        return x, valid

    def forward(
        self,
        feats: dict[str, torch.Tensor],
        valid: dict[str, torch.Tensor],
        dates: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats[m]`` (B, T_m, G_m, N, D), ``valid[m]`` (B, T_m, G_m, N), ``dates[m]``
        (B, T_m) -> (fusion-token output (B, N, D), location validity (B, N))."""
        seqs = [self._sequence(m, feats[m], valid[m], dates[m]) for m in feats]
        x = torch.cat([s[0] for s in seqs], dim=2)  # (B, N, L, D)
        mask = torch.cat([s[1] for s in seqs], dim=2)  # (B, N, L)
        B, N, L, D = x.shape
        tok = self.fusion_token.to(x.dtype).expand(B, N, 1, D)  # (B, N, 1, D)
        x = torch.cat([tok, x], dim=2).reshape(B * N, L + 1, D)  # (B*N, 1+L, D)
        loc_valid = mask.any(dim=-1)  # (B, N)
        full = torch.cat([mask.new_ones(B, N, 1), mask], dim=2).reshape(B * N, L + 1)
        # a mask-free call lets the attention kernel take its fast path; deciding that reads
        # the mask on the host, so only where it costs no sync (spatial.host_checks)
        skip = host_checks(full) and bool(full.all())
        y, _ = self.transformer(x, None if skip else full)  # (B*N, 1+L, D)
        return y[:, 0].reshape(B, N, D), loc_valid
