"""Feature kinds and the shared steps of feature extraction.

A :class:`FeatureKind` is what one row of the results table measures: the raw
normalised bands (``embedder is None``), a random init, or a checkpoint, each wrapping an
``rs.Embedder``. Embeddings always come from ``Embedder.embed`` on in-memory
``rs.ModalityData`` batches (``[B, T, C, H, W]``, physical units).

Data are given by *role* (``"s2"``, ``"s1"``, ``"hs"``: Sentinel-2 optical, SAR,
hyperspectral) and fed under the model's modality of that kind
(:func:`modality_for`): a model's ``s2`` modality takes L1C or L2A of any band subset,
its hyperspectral modality takes AVIRIS bands, and so on (the band hypernetwork reads
each band's descriptor). A model without a modality of the role cannot embed the input;
the table then says so instead of a number.

Raw features are normalised with the registry's per-band statistics (``(x - mean) /
std`` in physical units, the same statistics the model uses); invalid pixels count as 0
after normalisation (the band mean).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import rsfm_core as rs


class Unsupported(Exception):
    """This feature kind cannot produce features for this input (the message says why)."""


@dataclass
class FeatureKind:
    """One row label of the table: ``embedder`` None means the raw normalised bands."""

    name: str
    embedder: object | None = None  # rs.Embedder
    info: dict = field(default_factory=dict)

    @property
    def is_raw(self) -> bool:
        return self.embedder is None


def raw_kind() -> FeatureKind:
    return FeatureKind("raw bands", None, {"kind": "raw"})


def model_kind(name: str, embedder, info: dict) -> FeatureKind:
    params = sum(p.numel() for p in embedder.model.parameters())
    return FeatureKind(name, embedder, {**info, "params": params, "dim": embedder.dim})


# ---------------------------------------------------------------------------- modalities

_ROLE_TEXT = {"s2": "Sentinel-2", "s1": "SAR", "hs": "hyperspectral"}


def _fits(role: str, sensor) -> bool:
    if role == "s2":
        return sensor.kind == "optical" and sensor.name.startswith("sentinel2")
    if role == "s1":
        return sensor.kind == "sar"
    if role == "hs":
        return sensor.kind == "hyperspectral"
    raise ValueError(f"unknown data role {role!r}; use s2, s1 or hs")


def modality_for(config, role: str) -> str:
    """The model's modality for data of ``role``: the one named ``role`` if its declared
    sensor fits, else the first that fits; raises :class:`Unsupported` otherwise."""
    fitting = [n for n, m in config.modalities.items() if _fits(role, config.sensor(m.sensor))]
    if not fitting:
        declared = ", ".join(f"{n} ({m.sensor})" for n, m in config.modalities.items())
        raise Unsupported(
            f"{config.name} has no {_ROLE_TEXT[role]} modality (declared: {declared})"
        )
    return role if role in fitting else fitting[0]


# ---------------------------------------------------------------------------- embedding


def _rows(d, lo: int, hi: int):
    return dataclasses.replace(
        d, pixels=d.pixels[lo:hi], valid=d.valid[lo:hi], dates=d.dates[lo:hi]
    )


@dataclass
class Embedded:
    dense: torch.Tensor  # (B, D, h, w) float32, 0 where invalid
    pooled: torch.Tensor  # (B, D)
    valid: torch.Tensor  # (B, h, w) bool


def embed(kind: FeatureKind, inputs: dict, batch: int = 16) -> Embedded:
    """Embed batched ``{role: rs.ModalityData}`` with ``kind``'s model, ``batch`` samples
    per forward pass."""
    if kind.is_raw:
        raise ValueError("embed() needs a model feature kind, not the raw bands")
    emb = kind.embedder
    sample = {modality_for(emb.config, role): d for role, d in inputs.items()}
    B = next(iter(sample.values())).pixels.shape[0]
    parts = [emb.embed({m: _rows(d, i, i + batch) for m, d in sample.items()})
             for i in range(0, B, batch)]  # fmt: skip
    return Embedded(
        dense=torch.cat([p.dense for p in parts]),
        pooled=torch.cat([p.pooled for p in parts]),
        valid=torch.cat([p.valid for p in parts]),
    )


def upsample(dense: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Token map ``(B, D, h, w)`` -> pixel map ``(B, D, *size)``: bilinear,
    ``align_corners=False`` (a token's value sits at its patch centre; edges repeat)."""
    return F.interpolate(dense, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------- raw bands


def normalised(d) -> torch.Tensor:
    """``(x - mean) / std`` of a ModalityData's pixels per band (registry statistics of
    ``d.sensor``), 0 where invalid; same shape as ``d.pixels``."""
    sensor = rs.sensors.get(d.sensor)
    bands = [sensor.band(b) for b in d.bands]
    mean = torch.tensor([b.mean for b in bands], dtype=torch.float32)
    std = torch.tensor([b.std for b in bands], dtype=torch.float32)
    z = (d.pixels - mean[:, None, None]) / std[:, None, None]  # (..., C, H, W)
    ok = d.valid.unsqueeze(-3) & torch.isfinite(z)  # (..., 1 -> C, H, W)
    return torch.where(ok, z, torch.zeros(()))


def band_stats(d) -> np.ndarray:
    """Scene features of batched ``d``: per band, the mean and the std of the normalised
    values over valid pixels and dates: ``(B, 2 * C)`` (means, then stds)."""
    z = normalised(d)  # (B, T, C, H, W)
    ok = d.valid.unsqueeze(2).expand_as(z).float()  # (B, T, C, H, W)
    n = ok.sum((1, 3, 4)).clamp_min(1)  # (B, C)
    mean = (z * ok).sum((1, 3, 4)) / n
    var = ((z - mean[:, None, :, None, None]).square() * ok).sum((1, 3, 4)) / n
    return torch.cat([mean, var.sqrt()], 1).numpy()


def modality_data(pixels, valid, dates, sensor: str, bands) -> object:
    """A batched ``rs.ModalityData`` from arrays or tensors ``pixels (B, T, C, H, W)`` in
    physical units, ``valid (B, T, H, W)``, ``dates (B, T)`` days since 1970-01-01."""

    def tensor(a, dtype):
        if isinstance(a, torch.Tensor):
            return a.to(dtype).contiguous()
        return torch.as_tensor(np.ascontiguousarray(a)).to(dtype)

    return rs.ModalityData(
        pixels=tensor(pixels, torch.float32),
        valid=tensor(valid, torch.bool),
        dates=tensor(dates, torch.int64),
        sensor=sensor,
        bands=tuple(bands),
    )
