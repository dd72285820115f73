"""rs.read_embeddings: every COG dtype and the npz back to float32 + georeference;
dtype="auto" picks int8 for large maps (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest

import rsfm_core as rs
from rsfm_core.inference import options

from .conftest import inputs_of, read_cog

OPTS = dict(tile=32, overlap=8, batch=4, progress=False)


@pytest.fixture(scope="module")
def runs(micro, scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("read")
    res = {}
    for dt in ("float32", "float16", "int8"):
        res[dt] = micro.embed_rasters(inputs_of(scene), out / f"{dt}.tif", npz=out / f"{dt}.npz",
                                      dtype=dt, **OPTS)  # fmt: skip
    return res


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
def test_read_embeddings_restores_values_grid_and_tags(runs, dtype):
    ref = rs.read_embeddings(runs["float32"].out)  # float32 COG: the values as computed
    m = rs.read_embeddings(runs[dtype].out)
    assert m.values.dtype == np.float32 and m.values.shape == ref.values.shape
    assert m.grid == runs[dtype].grid  # the token grid, georeferenced
    assert m.model == "rsfm_tiny" and m.tags["RSFM_MODEL_SHA256"] == "random-init-seed-0"
    np.testing.assert_array_equal(m.valid, ref.valid)
    assert 0 < m.valid.sum() < m.valid.size  # the scene's nodata corner stays NaN
    ok = ref.valid
    if dtype == "int8":
        _, meta = read_cog(runs[dtype].out)
        step = np.array(meta["scales"])[:, None]
        assert np.all(np.abs(m.values[:, ok] - ref.values[:, ok]) <= step / 2 + 1e-6)
    else:
        np.testing.assert_allclose(m.values[:, ok], ref.values[:, ok], rtol=1e-3, atol=1e-6)
    npz = rs.read_embeddings(runs[dtype].npz)
    assert npz.grid == m.grid
    np.testing.assert_allclose(npz.values[:, ok], ref.values[:, ok], rtol=1e-3, atol=1e-6)
    part = rs.read_embeddings(runs[dtype].out, window=(2, 3, 5, 4))
    np.testing.assert_array_equal(part.values, m.values[:, 2:7, 3:7])
    assert part.grid == m.grid.window(2, 3, 5, 4)


def test_read_embeddings_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        rs.read_embeddings(tmp_path / "nope.tif")


def test_auto_dtype_is_int8_for_large_maps_only(micro, scene, tmp_path, monkeypatch):
    assert options.auto_dtype(5000, 5000, 128) == "int8"  # the 20,000 px scene, rsfm_tiny
    assert options.auto_dtype(1024, 1024, 128) == "float16"  # 4,096 px
    assert options.EmbedOptions().dtype == "auto"
    small = micro.embed_rasters(inputs_of(scene), tmp_path / "a.tif", **OPTS)
    assert read_cog(small.out)[1]["dtype"] == "float32"  # float16 (GDAL reads it as float32)
    monkeypatch.setattr(options, "INT8_ABOVE_BYTES", 0)
    big = micro.embed_rasters(inputs_of(scene), tmp_path / "b.tif", **OPTS)
    _, meta = read_cog(big.out)
    assert meta["dtype"] == "int8" and "RSFM_QUANTIZATION" in meta["tags"]
