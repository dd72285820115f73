"""The checkpoint shipped in the package (docs/models.md) loads offline, by name, verified."""

from __future__ import annotations

import json

import torch

import rsfm_core as rs
from rsfm_core.files import sha256_file
from rsfm_core.model.checkpoint import SHIPPED_DIR, shipped

NAME = "rsfm_tiny_real"


def test_shipped_checkpoint_is_small_and_records_its_checksum():
    assert NAME in shipped()
    folder = SHIPPED_DIR / NAME
    weights = folder / "model.safetensors"
    assert weights.stat().st_size <= 8 * 1024 * 1024  # shipped in the wheel: at most 8 MB
    meta = json.loads((folder / "config.json").read_text())
    assert meta["weights_sha256"] == sha256_file(weights)
    assert meta["config"]["name"] == "rsfm_tiny"


def test_shipped_checkpoint_loads_by_name_and_embeds():
    model = rs.load_pretrained(NAME)
    emb = rs.Embedder.from_pretrained(NAME, device="cpu")
    assert emb.info.verified and emb.info.sha256 == sha256_file(
        SHIPPED_DIR / NAME / "model.safetensors"
    )
    g = torch.Generator().manual_seed(0)
    bands = rs.sensors.get("sentinel2_l1c").band_names
    x = rs.ModalityData(torch.rand(2, 1, 13, 32, 32, generator=g) * 0.3,
                        torch.ones(2, 1, 32, 32, dtype=torch.bool), torch.full((2, 1), 17500),
                        "sentinel2_l1c", bands)  # fmt: skip
    with torch.no_grad():
        out = model({"s2": x})
    assert out.dense.shape == (2, 128, 8, 8) and torch.isfinite(out.pooled).all()
    e = emb.embed({"s2": x})
    torch.testing.assert_close(e.pooled, out.pooled, rtol=1e-5, atol=1e-5)
