"""Small inputs (issue 17, item 3): a raster smaller than one tile is embedded as one
tile of its own size, and ``Embedder.embed`` batches many small chips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsfm_core.inference.tiles import make_layout
from rsfm_core.sample import Grid

from .conftest import inputs_of, make_scene, micro_embedder, read_cog, read_whole
from .test_embed_memory import s1, s2

GRID = (10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)


@pytest.mark.parametrize(
    "hw,tile,overlap,want",
    [((64, 64), 256, 32, (64, 0, 1)), ((120, 90), 256, 32, (120, 0, 1)),
     ((30, 7), 256, 32, (32, 0, 1)), ((256, 256), 256, 32, (256, 32, 1)),
     ((300, 64), 256, 32, (256, 32, 2))],
)  # fmt: skip
def test_layout_shrinks_the_tile_to_a_raster_smaller_than_one_tile(hw, tile, overlap, want):
    L = make_layout(Grid("EPSG:32633", GRID, *hw), 4, tile, overlap)
    assert (L.tile, L.overlap, L.num_tiles) == want
    assert L.tile % 4 == 0


def test_a_64_px_chip_costs_a_64_px_tile_and_a_small_file(micro, tmp_path):
    scene = make_scene(tmp_path / "scene", h=64, w=64, nodata_corner=False)
    res = micro.embed_rasters(inputs_of(scene), out=tmp_path / "e.tif", progress=False)
    assert (res.tiles, res.computed) == (1, 1)
    arr, meta = read_cog(tmp_path / "e.tif")
    assert meta["tags"]["RSFM_TILE"] == "64" and meta["tags"]["RSFM_OVERLAP"] == "0"
    assert arr.shape == (16, 16, 16)
    import rasterio

    with rasterio.open(tmp_path / "e.tif") as ds:
        assert ds.block_shapes[0] == (16, 16)  # not one 256 x 256 block of padding
    assert (tmp_path / "e.tif").stat().st_size < 64 * 1024
    whole = micro.embed(read_whole(scene)).dense[0].numpy()  # one forward, no tiling
    np.testing.assert_allclose(arr, whole, rtol=2e-3, atol=2e-3)  # float16 COG


def test_embed_batches_many_small_chips_and_keeps_their_order(monkeypatch):
    emb = micro_embedder()
    chips = [{"s2": s2(32, 32, seed=i), "s1": s1(32, 32, seed=9 + i)} for i in range(3)]
    chips.insert(1, {"s2": s2(40, 24, seed=7)})
    chips.append({"s2": s2(40, 24, seed=8)})
    one_by_one = [emb.embed(c) for c in chips]
    calls = []
    forward = emb.model.forward
    monkeypatch.setattr(emb.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    many = emb.embed(chips, batch=2)
    assert len(calls) == 3  # 3 chips of one shape in 2 passes, 2 of another in 1
    assert len(many) == len(chips)
    for a, b in zip(many, one_by_one):
        assert a.dense.shape == b.dense.shape and a.dense.shape[0] == 1
        torch.testing.assert_close(a.dense, b.dense, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.pooled, b.pooled, rtol=1e-4, atol=1e-5)
        assert a.grid == b.grid
    with pytest.raises(ValueError, match="sample 0"):
        emb.embed([{}])
