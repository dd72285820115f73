"""Shared helpers for the model tests: small seeded inputs in physical units and a
micro model (smaller than rsfm_tiny) that keeps the suite fast on a 2-core CPU."""

from __future__ import annotations

import pytest
import torch

from rsfm_core import sensors
from rsfm_core.model import RSFMEncoder, build_model
from rsfm_core.sample import ModalityData

MICRO = dict(dim=32, depth=2, heads=2, fusion_depth=2, hyper_dim=16)


def make_modality(
    sensor: str,
    T: int,
    H: int,
    W: int,
    B: int = 2,
    seed: int = 0,
    bands: tuple[str, ...] | None = None,
    invalid_frac: float = 0.1,
) -> ModalityData:
    """Random physical values around the sensor's statistics (reflectance, or dB for SAR),
    random invalid pixels (holding 0.0, as readers write them) and random dates."""
    g = torch.Generator().manual_seed(seed)
    s = sensors.get(sensor)
    names = tuple(bands) if bands is not None else s.band_names
    idx = s.indices(names)
    mean = torch.from_numpy(s.means[idx])[:, None, None]  # (C, 1, 1)
    std = torch.from_numpy(s.stds[idx])[:, None, None]
    x = mean + std * torch.randn(B, T, len(names), H, W, generator=g)  # (B, T, C, H, W)
    valid = torch.rand(B, T, H, W, generator=g) >= invalid_frac
    x = x * valid[:, :, None]
    dates = 18000 + torch.randint(0, 1500, (B, T), generator=g)
    return ModalityData(x, valid, dates, sensor, names)


def micro_model(**overrides) -> RSFMEncoder:
    torch.manual_seed(0)
    return build_model("rsfm_tiny", **{**MICRO, **overrides}).eval()


@pytest.fixture
def micro():
    return micro_model
