"""Longer checks (``-m slow``): a 1024 x 768 px scene through files with the stub encoder
(exact stitching at production tile sizes, several tile rows, block-snapped reads)."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import inputs_of, make_scene, read_cog, read_whole


@pytest.mark.slow
def test_large_scene_stub_exact(stub, tmp_path):
    scene = make_scene(tmp_path / "scene", h=1024, w=768)
    res = stub.embed_rasters(inputs_of(scene), tmp_path / "e.tif", tile=256, overlap=32,
                             batch=3, dtype="float32", progress=False)  # fmt: skip
    x, m = read_cog(res.out)
    whole = stub.embed(read_whole(scene))
    ref = whole.dense[0].numpy()
    ref[:, ~whole.valid[0].numpy()] = np.nan
    assert m["shape"] == (256, 192) and res.tiles == 20
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-5, equal_nan=True)
