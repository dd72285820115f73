"""Raster edges (issue 18): a raster whose size is no multiple of the tile (nor of the
token) has no NaN and no all-zero token where its input is valid, through the file path
and the in-memory tiled path; and the seam metric of benchmarks/embed.py."""

from __future__ import annotations

import numpy as np
import pytest

from rsfm_core.io import tiles

from .conftest import inputs_of, make_scene, read_cog, read_whole


@pytest.mark.parametrize("tile,overlap", [(32, 8), (32, 0), (48, 16)])
def test_no_nan_or_zero_tokens_at_raster_edges(micro, tmp_path, tile, overlap):
    scene = make_scene(tmp_path / "scene", h=70, w=58, nodata_corner=False)  # 17.5 x 14.5 tokens
    res = micro.embed_rasters(inputs_of(scene), tmp_path / "e.tif", tile=tile, overlap=overlap,
                              dtype="float32", progress=False)  # fmt: skip
    x, m = read_cog(res.out)
    assert m["shape"] == (18, 15)  # partial tokens at the bottom and right count
    assert not np.isnan(x).any()
    norms = np.linalg.norm(x, axis=0)
    assert norms.min() > 0.1 * np.median(norms), norms.min()
    for edge in (x[:, -1, :], x[:, :, -1], x[:, 0, :], x[:, :, 0]):  # edge tokens look inside
        inner = x[:, 1:-1, 1:-1].reshape(x.shape[0], -1)
        assert np.abs(edge.mean(axis=1) - inner.mean(axis=1)).max() < 5 * inner.std(axis=1).max()
    mem = micro.embed(read_whole(scene), tile=tile, overlap=overlap)
    assert bool(mem.valid.all()) and (mem.dense.norm(dim=1) > 0).all()
    np.testing.assert_allclose(mem.dense[0].numpy(), x, rtol=1e-5, atol=1e-5)


def test_seam_ratio_is_one_without_seams_and_sees_a_step():
    from benchmarks.embed import seam_ratio

    rng = np.random.default_rng(0)
    ts = tiles(64, 64, 16, 0)  # token grid 16 x 16 at token 4: borders every 4 tokens
    smooth = rng.normal(scale=0.1, size=(8, 16, 16))  # no structure: borders like inside
    assert seam_ratio(smooth, ts, 4) == pytest.approx(1.0, abs=0.25)
    stepped = smooth.copy()
    for k in range(4, 16, 4):
        stepped[:, :, k:] += 3.0  # a jump at every tile column border
    assert seam_ratio(stepped, ts, 4) > 1.5
