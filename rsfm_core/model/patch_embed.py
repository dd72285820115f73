"""Spectral patch embedding for any band set (DOFA-style band hypernetwork).

Each band's *descriptor* (optical/hyperspectral: centre wavelength and FWHM in nm,
Fourier-encoded; SAR: one-hot polarization and log-frequency) goes through a small MLP
(the hypernetwork) that emits that band's ``k x k -> D`` projection. A patch token of
spectral group ``g`` is the sum over the group's bands of their projections of the
normalised pixels, plus a bias (shared bias + modality embedding + group embedding), plus
a fixed 2-D sin-cos position embedding. The heavy part runs through
``rsfm_kernels.spectral_patch_embed`` (op ``spectral_embed``).

Decisions:
- Descriptors depend on band physics only (never on the band's position), so permuting
  bands together with their names leaves the tokens unchanged, and any subset works.
- Spectral groups are assigned by wavelength against ``group_edges_nm`` (not by
  position), so a band subset or another hyperspectral sensor (AVIRIS into an EnMAP
  modality) lands in the right groups. A group with no band gives invalid tokens.
- Each band's projection is scaled by 1 / (bands in its group): a token is the *mean*
  projection, so its magnitude does not grow with the band count (3 RGB bands vs 56
  EnMAP bands per group), and dropping bands at inference does not shift it.
- Generated kernels are ``k x k`` with ``k = min(patch, 8)``; for larger patches
  (1 m RGB with patch 40) the kernel is bilinearly resized to ``p x p`` and scaled by
  ``(k / p)**2`` (the FlexiViT-style resize that keeps a smooth input's response), which
  bounds the generator at ``hyper_dim * 64 * D`` parameters per kernel size.
- Positions are fixed 2-D sin-cos (MAE): any token grid works without interpolation.
  They count from the input's top-left token plus ``pos_offset`` (token units), so a crop
  at token ``(r, c)`` embedded with ``pos_offset=(r, c)`` sees the whole input's positions.
- Normalisation ``(x - mean) / std`` with the checkpoint's sensor statistics and the
  invalid-pixel zeroing happen inside the op so that a fused kernel reads pixels once.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rsfm_kernels
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sensors import POLARIZATIONS, Band, Sensor
from .config import ModelConfig

# ---------------------------------------------------------------------------- descriptors

CENTER_PERIODS_NM = np.geomspace(8.0, 32000.0, 16)
FWHM_PERIODS_NM = np.geomspace(4.0, 8000.0, 8)
FREQ_PERIODS_LOG10_GHZ = np.geomspace(0.5, 8.0, 4)
# flags (optical, sar, has_fwhm) + centre + FWHM + polarization one-hot + frequency
DESCRIPTOR_DIM = (
    3
    + 2 * len(CENTER_PERIODS_NM)
    + 2 * len(FWHM_PERIODS_NM)
    + len(POLARIZATIONS)
    + 2 * len(FREQ_PERIODS_LOG10_GHZ)
)


def _fourier(value: float, periods: np.ndarray) -> np.ndarray:
    angles = 2.0 * math.pi * value / periods
    return np.concatenate([np.sin(angles), np.cos(angles)])


def band_descriptor(band: Band) -> np.ndarray:
    """The hypernetwork's input for one band: ``(DESCRIPTOR_DIM,)`` float32; the parts
    that do not apply to the band's kind are zero."""
    zc = np.zeros(2 * len(CENTER_PERIODS_NM))
    zw = np.zeros(2 * len(FWHM_PERIODS_NM))
    pol = np.zeros(len(POLARIZATIONS))
    zf = np.zeros(2 * len(FREQ_PERIODS_LOG10_GHZ))
    if band.is_sar:
        flags = np.array([0.0, 1.0, 0.0])
        pol[POLARIZATIONS.index(band.polarization)] = 1.0
        zf = _fourier(math.log10(band.frequency_ghz), FREQ_PERIODS_LOG10_GHZ)
    else:
        has_fwhm = band.fwhm_nm is not None
        flags = np.array([1.0, 0.0, float(has_fwhm)])
        zc = _fourier(band.center_nm, CENTER_PERIODS_NM)
        if has_fwhm:
            zw = _fourier(band.fwhm_nm, FWHM_PERIODS_NM)
    return np.concatenate([flags, zc, zw, pol, zf]).astype(np.float32)


@dataclass(frozen=True)
class BandSet:
    """Everything the embedding needs about one band list, as tensors on one device."""

    descriptors: torch.Tensor  # (C, DESCRIPTOR_DIM)
    mean: torch.Tensor  # (C,) physical units
    std: torch.Tensor  # (C,)
    group_index: torch.Tensor  # (C,) int64
    band_scale: torch.Tensor  # (C,) 1 / bands in the band's group
    group_present: torch.Tensor  # (G,) bool
    num_groups: int


def make_band_set(
    sensor: Sensor,
    names: Sequence[str],
    groups: int,
    edges_nm: Sequence[float],
    device: torch.device | str = "cpu",
) -> BandSet:
    """The :class:`BandSet` of ``names`` (in the order given, i.e. the data's C axis)."""
    bands = [sensor.bands[i] for i in sensor.indices(names)]
    if groups == 1:
        gi = np.zeros(len(bands), dtype=np.int64)
    else:
        if any(b.is_sar for b in bands):
            raise ValueError(f"{sensor.name}: SAR bands cannot be split into spectral groups")
        centers = np.array([b.center_nm for b in bands])
        gi = np.searchsorted(np.asarray(edges_nm), centers, side="right").astype(np.int64)
    counts = np.bincount(gi, minlength=groups)
    t = lambda a, dt=torch.float32: torch.as_tensor(np.asarray(a), dtype=dt, device=device)
    return BandSet(
        descriptors=t(np.stack([band_descriptor(b) for b in bands])),
        mean=t([b.mean for b in bands]),
        std=t([b.std for b in bands]),
        group_index=t(gi, torch.int64),
        band_scale=t(1.0 / counts[gi]),
        group_present=t(counts > 0, torch.bool),
        num_groups=groups,
    )


# ---------------------------------------------------------------------------- helpers


def sincos_pos_2d(
    h: int,
    w: int,
    dim: int,
    device: torch.device | str = "cpu",
    offset: tuple[int, int] | torch.Tensor = (0, 0),
) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding of the token rows ``offset[0] + [0, h)``
    and columns ``offset[1] + [0, w)``, row-major, ``dim % 4 == 0``: ``(h * w, dim)`` for a
    pair, or ``(B, h * w, dim)`` for an integer ``(B, 2)`` tensor of per-sample offsets
    (computed on its device: no host sync)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim % 4 == 0, got {dim}")
    if isinstance(offset, torch.Tensor):
        device = offset.device
        r, c = offset[..., 0:1].float(), offset[..., 1:2].float()  # (B, 1) or (1,)
    else:
        r, c = float(offset[0]), float(offset[1])
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float32) / (dim // 4))
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    ys, xs = ys.reshape(-1) + r, xs.reshape(-1) + c  # (N,) or (B, N)
    ay, ax = ys[..., None] * omega, xs[..., None] * omega  # (..., N, D/4)
    return torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=-1)  # (..., N, D)


def check_offset(
    pos_offset: tuple[int, int] | torch.Tensor | None, batch: int
) -> tuple[int, int] | torch.Tensor:
    """``pos_offset`` (None, an int pair for the whole batch, or an integer ``(2,)`` or
    ``(B, 2)`` tensor of per-sample token (row, col)) checked: a pair, or a ``(B, 2)``
    tensor. Shapes and dtypes only: nothing is read from the device."""
    if pos_offset is None:
        return (0, 0)
    if isinstance(pos_offset, torch.Tensor):
        if pos_offset.is_floating_point() or tuple(pos_offset.shape) not in ((2,), (batch, 2)):
            raise ValueError(
                f"pos_offset must be an integer tensor of shape (2,) or (B, 2) = ({batch}, 2) "
                f"in token units, got {pos_offset.dtype} {tuple(pos_offset.shape)}"
            )
        return pos_offset.reshape(-1, 2).expand(batch, 2)
    try:
        r, c = pos_offset
        return (operator.index(r), operator.index(c))
    except (TypeError, ValueError):
        raise ValueError(
            f"pos_offset must be a (row, col) pair of ints in token units, got {pos_offset!r}"
        ) from None


def token_validity(valid: torch.Tensor, patch: int, min_frac: float) -> torch.Tensor:
    """``valid`` (BT, H, W) bool -> (BT, h, w): more than ``min_frac`` of the patch valid."""
    frac = F.avg_pool2d(valid[:, None].float(), patch, stride=patch)[:, 0]  # (BT, h, w)
    return frac > min_frac


def resize_kernel(weight: torch.Tensor, patch: int) -> torch.Tensor:
    """(C, D, k, k) -> (C, D, p, p): bilinear resize scaled by (k / p)**2 (see module doc)."""
    k = weight.shape[-1]
    if k == patch:
        return weight
    out = F.interpolate(
        weight, size=(patch, patch), mode="bilinear", align_corners=False, antialias=patch < k
    )
    return out * (k / patch) ** 2


# ---------------------------------------------------------------------------- modules


class BandHypernet(nn.Module):
    """Band descriptor -> ``k x k -> D`` projection: a shared trunk, one linear head per
    kernel size (heads are shared by all modalities with that kernel size)."""

    def __init__(self, dim: int, hidden: int, kernel_sizes: Sequence[int]) -> None:
        super().__init__()
        self.dim = dim
        self.trunk = nn.Sequential(
            nn.Linear(DESCRIPTOR_DIM, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden),
        )
        self.heads = nn.ModuleDict({str(k): nn.Linear(hidden, k * k * dim) for k in kernel_sizes})

    def reset_parameters(self) -> None:
        # A generated weight then has variance ~1/k^2: unit-variance tokens at init.
        for k, head in self.heads.items():
            nn.init.normal_(head.weight, std=1.0 / (int(k) * math.sqrt(head.in_features)))
            nn.init.zeros_(head.bias)

    def forward(self, descriptors: torch.Tensor, kernel_size: int) -> torch.Tensor:
        """``descriptors`` (C, F) -> weights (C, D, k, k)."""
        e = self.trunk(descriptors)  # (C, E)
        w = self.heads[str(kernel_size)](e)  # (C, D*k*k)
        return w.view(-1, self.dim, kernel_size, kernel_size)  # (C, D, k, k)


class SpectralPatchEmbed(nn.Module):
    """Pixels of one modality ``(B, T, C, H, W)`` -> frame tokens ``(B*T*G, N, D)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D = config.dim
        self.config = config
        self.hypernet = BandHypernet(D, config.hyper_dim, config.kernel_sizes)
        self.bias = nn.Parameter(torch.zeros(D))
        self.modality_index = {name: i for i, name in enumerate(config.modalities)}
        self.modality_embed = nn.Parameter(torch.zeros(len(config.modalities), D))
        self.group_embed = nn.ParameterDict(
            {
                name: nn.Parameter(torch.zeros(m.groups, D))
                for name, m in config.modalities.items()
                if m.groups > 1
            }
        )
        self.backend = config.embed_backend

    def reset_parameters(self) -> None:
        self.hypernet.reset_parameters()
        nn.init.normal_(self.modality_embed, std=0.02)
        for p in self.group_embed.values():
            nn.init.normal_(p, std=0.02)

    def forward(
        self,
        pixels: torch.Tensor,
        valid: torch.Tensor,
        bands: BandSet,
        modality: str,
        pos_offset: tuple[int, int] | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixels`` (B, T, C, H, W) physical, ``valid`` (B, T, H, W) -> (tokens
        (B*T*G, N, D), token validity (B*T*G, N)). ``pos_offset``: token (row, col) of the
        input's top-left token, a pair for the batch or a (B, 2) integer tensor."""
        m = self.config.modalities[modality]
        B, T, C, H, W = pixels.shape
        p, G = m.patch, bands.num_groups
        # The model computes in its parameter dtype (bf16 under DeepSpeed bf16); the patch
        # embedding itself runs in float32 (physical units, normalisation), tokens are
        # handed on in the parameter dtype.
        dt = self.bias.dtype
        desc = bands.descriptors.to(dt)
        weight = resize_kernel(self.hypernet(desc, m.kernel_size).float(), p)  # (C, D, p, p)
        weight = weight * bands.band_scale[:, None, None, None]
        bias = (self.bias + self.modality_embed[self.modality_index[modality]]).float()  # (D,)
        bias = bias.expand(G, -1)  # (G, D)
        if modality in self.group_embed:
            bias = bias + self.group_embed[modality].float()
        pixels = pixels.float()
        x = pixels.flatten(0, 1)  # (BT, C, H, W)
        v = valid.flatten(0, 1)  # (BT, H, W)

        offset = check_offset(pos_offset, B)
        pos = sincos_pos_2d(H // p, W // p, self.config.dim, pixels.device, offset)
        shared = pos.dim() == 2  # one (N, D) table for the batch: added inside the op
        tokens = rsfm_kernels.spectral_patch_embed(
            x, weight, bands.group_index, G, bias, pos if shared else None, bands.mean,
            bands.std, v, backend=self.backend,
        )  # fmt: skip  # (BT, G, N, D)
        if not shared:  # per-sample tables (B, N, D): one broadcast add, no host loop
            tokens = (tokens.view(B, T, G, -1, self.config.dim) + pos[:, None, None]).flatten(0, 1)
        tv = token_validity(v, p, self.config.min_valid_frac).flatten(1)  # (BT, N)
        tv = tv[:, None, :] & bands.group_present[None, :, None]  # (BT, G, N)
        return tokens.flatten(0, 1).to(dt), tv.flatten(0, 1)  # (BT*G, N, D), (BT*G, N)
