"""Embedder.embed on in-memory tensors: tiled vs whole raster, seams, coverage."""

from __future__ import annotations

import pytest
import torch

import rsfm_core as rs
from rsfm_core.sample import Grid, ModalityData

from .conftest import micro_embedder, smooth

GRID = Grid("EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0), 0, 0)


def s2(h: int, w: int, seed: int = 0, valid=None) -> ModalityData:
    x = torch.from_numpy(smooth(12, h, w, seed, 0.02, 0.45))[None]  # (T=1, C, H, W)
    v = torch.ones(1, h, w, dtype=torch.bool) if valid is None else valid
    g = Grid(GRID.crs, GRID.transform, h, w)
    return ModalityData(x * v[:, None], v, torch.tensor([18800]), "sentinel2_l2a",
                        rs.sensors.get("sentinel2_l2a").band_names, grid=g)  # fmt: skip


def s1(h: int, w: int, seed: int = 5) -> ModalityData:
    x = torch.from_numpy(smooth(2, h, w, seed, -22.0, -5.0))[None]
    return ModalityData(x, torch.ones(1, h, w, dtype=torch.bool), torch.tensor([18805]),
                        "sentinel1_grd", ("VV", "VH"))  # fmt: skip


@pytest.mark.parametrize("tile,overlap", [(32, 8), (32, 16), (24, 0)])
def test_stub_tiled_equals_whole_everywhere(stub, tile, overlap):
    """With a translation-equivariant local model, stitching is exact: every token is
    covered (a 70 x 58 raster is no multiple of tile or token) and equals the whole map."""
    sample = {"s2": s2(70, 58), "s1": s1(70, 58)}
    whole = stub.embed(sample)
    tiled = stub.embed(sample, tile=tile, overlap=overlap, batch=3)
    assert tiled.dense.shape == whole.dense.shape == (1, 8, 18, 15)
    assert bool(tiled.valid.all())  # every pixel covered
    torch.testing.assert_close(tiled.dense, whole.dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiled.pooled, whole.pooled, rtol=1e-5, atol=1e-5)
    assert tiled.grid.transform == (40.0, 0.0, 500000.0, 0.0, -40.0, 4600000.0)


def test_micro_whole_vs_tiled_global_positions_agree(micro):
    """Same positions as the whole raster: tiles differ only by attention context."""
    sample = {"s2": s2(64, 96), "s1": s1(64, 96)}
    whole = micro.embed(sample).dense
    tiled = micro.embed(sample, tile=32, overlap=16, positions="global").dense
    rel = (tiled - whole).norm() / whole.norm()
    assert rel < 0.01, rel
    interior = (slice(None), slice(None), slice(2, 14), slice(2, 22))
    torch.testing.assert_close(tiled[interior], whole[interior], rtol=0.05, atol=0.02)


def _seam_excess(tiled, whole):
    """Per column boundary: mean feature jump of the tiled map minus the whole map's."""
    jt = (tiled[0, :, :, 1:] - tiled[0, :, :, :-1]).norm(dim=0).mean(0)
    jw = (whole[0, :, :, 1:] - whole[0, :, :, :-1]).norm(dim=0).mean(0)
    return jt - jw


def test_blending_removes_the_seam():
    """Tile-local positions (the default) make neighbouring tiles disagree; without
    overlap that is a hard edge at the tile boundary, with overlap the sin^2 blend
    spreads it so that no column jumps much more than in the whole-raster map."""
    emb = micro_embedder(dim=32, depth=2, hyper_dim=16)
    sample = {"s2": s2(64, 128)}
    whole = emb.embed(sample).dense
    hard = _seam_excess(emb.embed(sample, tile=64, overlap=0).dense, whole)
    soft = _seam_excess(emb.embed(sample, tile=64, overlap=32).dense, whole)
    assert hard.argmax() == 15  # the boundary between token columns 15 and 16
    assert soft.max() < 0.5 * hard.max(), (soft.max(), hard.max())


def test_invalid_tile_is_nodata_and_skipped(stub):
    v = torch.ones(1, 64, 64, dtype=torch.bool)
    v[:, :, 32:] = False  # the right half: tiles there have no valid pixel
    out = stub.embed({"s2": s2(64, 64, valid=v)}, tile=32, overlap=0)
    assert bool(out.valid[0, :, :8].all()) and not bool(out.valid[0, :, 8:].any())
    assert float(out.dense[0, :, :, 8:].abs().max()) == 0.0


def test_untiled_embed_pads_to_whole_tokens_and_batches(micro):
    a, b = s2(30, 22, seed=1), s2(30, 22, seed=2)
    batch = ModalityData(torch.stack([a.pixels, b.pixels]), torch.stack([a.valid, b.valid]),
                         torch.stack([a.dates, b.dates]), a.sensor, a.bands)  # fmt: skip
    out = micro.embed({"s2": batch})
    assert out.dense.shape == (2, 16, 8, 6) and out.pooled.shape == (2, 16)
    one = micro.embed({"s2": a})
    torch.testing.assert_close(one.dense[0], out.dense[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out.pooled[0], out.pooled[1])
