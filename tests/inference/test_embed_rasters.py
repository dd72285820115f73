"""Embedder.embed_rasters on small GeoTIFF scenes: outputs, georeferencing, nodata,
determinism, quantisation, chips."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("rasterio")
pytest.importorskip("pyarrow")
pytest.importorskip("shapely")

import pyarrow.parquet as pq
import shapely
from affine import Affine

from rsfm_core.inference import MissingInputWarning

from .conftest import inputs_of, read_cog, read_whole

OPTS = dict(tile=32, overlap=8, batch=4, chip=32, progress=False)


@pytest.fixture(scope="module")
def run_f32(micro, scene, tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingInputWarning)  # S2 + S1 = all the model takes
        res = micro.embed_rasters(
            inputs_of(scene), d / "emb.tif", parquet=d / "chips.parquet", npz=d / "emb.npz",
            dtype="float32", **OPTS,
        )  # fmt: skip
    return res, d


def test_dense_cog_georeferencing_nodata_and_tags(run_f32, scene):
    res, d = run_f32
    x, m = read_cog(d / "emb.tif")
    assert m["layout"] == "COG" and m["count"] == 16 and m["shape"] == (20, 18)
    assert m["crs"].to_epsg() == 32633
    assert m["transform"] == Affine(40.0, 0.0, 500000.0, 0.0, -40.0, 4600000.0)  # token grid
    assert np.isnan(m["nodata"]) and m["overviews"] == [2]
    # the 32 x 32 px nodata corner = the bottom-right 8 x 8 tokens; everything else valid
    corner = np.zeros((20, 18), bool)
    corner[12:, 10:] = True
    np.testing.assert_array_equal(np.isnan(x).all(0), corner)
    assert not np.isnan(x[:, ~corner]).any()
    t = m["tags"]
    assert t["RSFM_MODEL"] == "rsfm_tiny" and t["RSFM_MODEL_SHA256"] == "random-init-seed-0"
    assert json.loads(t["RSFM_INPUTS"])["s2"]["dates"] == ["2021-05-01", "2021-06-10"]
    assert res.skipped == 1 and res.computed + res.skipped == res.tiles == 9
    assert set(res.seconds) >= {"read", "compute", "write", "finalize", "total"}


def test_files_equal_the_in_memory_tiled_path(run_f32, micro, scene):
    """Block-aligned chunk reads and the file writers change no value."""
    x, _ = read_cog(run_f32[1] / "emb.tif")
    mem = micro.embed(read_whole(scene), tile=32, overlap=8, batch=4)
    ref = mem.dense[0].numpy()
    ref[:, ~mem.valid[0].numpy()] = np.nan
    np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_geoparquet_chips(run_f32):
    res, d = run_f32
    t = pq.read_table(d / "chips.parquet")
    geo = json.loads(t.schema.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["Polygon"]
    assert col["crs"]["id"] == {"authority": "EPSG", "code": 32633}
    assert "crs" not in geo["columns"]["geometry_crs84"]  # absent = OGC:CRS84
    # 80 x 72 px in 32 px chips: 3 x 3 chips, the bottom-right one all nodata (no row)
    assert t.num_rows == 8 and 8 not in t["chip_id"].to_pylist()
    rows = t.to_pylist()
    last = next(r for r in rows if r["chip_id"] == 7)  # row 2, col 1: clipped to 16 x 32 px
    assert (last["row"], last["col"], last["height"], last["width"]) == (64, 32, 16, 32)
    poly = shapely.from_wkb(last["geometry"])
    assert poly.bounds == (500320.0, 4599200.0, 500640.0, 4599360.0)
    lon, lat = shapely.from_wkb(last["geometry_crs84"]).centroid.coords[0]
    assert 14.9 < lon < 15.1 and 41.5 < lat < 41.6  # UTM 33N near its central meridian
    assert len(last["embedding"]) == 16 and last["sensors"] == ["sentinel1_grd", "sentinel2_l2a"]
    assert str(last["date_start"]) == "2021-05-01" and str(last["date_end"]) == "2021-06-10"
    assert last["valid_fraction"] == 0.25  # token cols 8, 9 of 8..15 lie outside the nodata corner
    assert col["bbox"] == [500000.0, 4599200.0, 500720.0, 4600000.0]


def test_npz_matches_cog(run_f32):
    d = run_f32[1]
    z = np.load(d / "emb.npz")
    x, m = read_cog(d / "emb.tif")
    np.testing.assert_array_equal(z["embedding"], x)
    np.testing.assert_array_equal(z["valid"], ~np.isnan(x[0]))
    assert tuple(z["transform"]) == (40.0, 0.0, 500000.0, 0.0, -40.0, 4600000.0)
    assert z["chip_embedding"].shape == (8, 16)
    t = pq.read_table(d / "chips.parquet")
    np.testing.assert_allclose(
        z["chip_embedding"], np.stack(t["embedding"].to_numpy(zero_copy_only=False))
    )


def _md5(p):
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_repeated_runs_give_identical_files(run_f32, micro, scene, tmp_path):
    res = micro.embed_rasters(inputs_of(scene), tmp_path / "emb.tif", parquet=tmp_path / "c.parquet",
                              dtype="float32", **OPTS)  # fmt: skip
    assert _md5(res.out) == _md5(run_f32[1] / "emb.tif")
    assert _md5(res.parquet) == _md5(run_f32[1] / "chips.parquet")


def test_int8_and_float16_outputs(run_f32, micro, scene, tmp_path):
    ref, _ = read_cog(run_f32[1] / "emb.tif")
    micro.embed_rasters(inputs_of(scene), tmp_path / "q.tif", dtype="int8", **OPTS)
    q, m = read_cog(tmp_path / "q.tif")
    assert m["dtype"] == "int8" and m["nodata"] == -128 and "RSFM_QUANTIZATION" in m["tags"]
    scale, offset = np.array(m["scales"])[:, None, None], np.array(m["offsets"])[:, None, None]
    deq = np.where(q == -128, np.nan, q * scale + offset)
    np.testing.assert_array_equal(np.isnan(deq), np.isnan(ref))
    assert np.nanmax(np.abs(deq - ref) / scale) <= 0.5 + 1e-6  # half a quantisation step
    micro.embed_rasters(inputs_of(scene), tmp_path / "h.tif", dtype="float16", **OPTS)
    h, _ = read_cog(tmp_path / "h.tif")
    np.testing.assert_allclose(h, ref, rtol=2e-3, atol=1e-3, equal_nan=True)


def test_pixel_resolution_output(micro, scene, tmp_path):
    micro.embed_rasters(
        inputs_of(scene), tmp_path / "px.tif", resolution="pixel", dtype="float32", **OPTS
    )
    x, m = read_cog(tmp_path / "px.tif")
    assert m["shape"] == (80, 72) and m["transform"] == Affine(10, 0, 500000, 0, -10, 4600000)
    assert np.isnan(x[:, -8:, -8:]).all() and not np.isnan(x[:, :40, :30]).any()


def test_region_and_global_positions_whole_vs_tiled(micro, scene, tmp_path):
    """A 48 x 48 px region: one tile covering it vs 32 px tiles, same global positions."""
    region = (8, 8, 48, 48)
    one = micro.embed_rasters(inputs_of(scene), tmp_path / "a.tif", dtype="float32", region=region,
                              **{**OPTS, "tile": 48, "overlap": 0})  # fmt: skip
    tiled = micro.embed_rasters(inputs_of(scene), tmp_path / "b.tif", dtype="float32", region=region,
                                positions="global", **OPTS)  # fmt: skip
    a, m = read_cog(one.out)
    b, _ = read_cog(tiled.out)
    assert m["transform"] == Affine(40.0, 0.0, 500080.0, 0.0, -40.0, 4599920.0)
    assert torch.tensor(np.abs(a - b)).nanmean() < 0.01 * np.nanmean(np.abs(a))
