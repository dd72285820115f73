"""Real data from ../shared/data (skipped when absent): Sen1Floods11 S1 + S2 and
EuroSAT-MS tiles through the whole raster path."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("pyarrow")
pytest.importorskip("shapely")

import pyarrow.parquet as pq
import rasterio
import shapely

import rsfm_core as rs

from .conftest import read_cog

EUROSAT_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]  # fmt: skip


def test_sen1floods11_s1_s2(micro, real_data, tmp_path):
    d = real_data("sen1floods11")
    date = ["2019-09-18"]  # the chip's acquisition (the files carry no date tag)
    inputs = {  # S2 here: L1C, 13 bands B01..B12 with B8A after B08 (the sensor's order)
        "s2": rs.RasterInput("sentinel2_l1c", [str(d / "Spain_7370579_S2Hand.tif")], date),
        "s1": rs.RasterInput("sentinel1_grd", [str(d / "Spain_7370579_S1Hand.tif")], date),
    }
    res = micro.embed_rasters(inputs, tmp_path / "e.tif", parquet=tmp_path / "c.parquet",
                              tile=128, overlap=16, chip=128, dtype="float32", progress=False)  # fmt: skip
    x, m = read_cog(res.out)
    with rasterio.open(d / "Spain_7370579_S2Hand.tif") as src:
        t = src.transform
    assert m["crs"].to_epsg() == 4326 and m["shape"] == (128, 128)
    assert m["transform"] == rasterio.Affine(t.a * 4, 0, t.c, 0, t.e * 4, t.f)
    assert np.isnan(x[0]).mean() < 0.01  # the chip is nearly all valid
    assert json.loads(m["tags"]["RSFM_INPUTS"])["s2"]["bands"][-4:] == ["B09", "B10", "B11", "B12"]
    chips = pq.read_table(res.parquet)
    assert chips.num_rows == 16 and 19 < res.km2 < 22  # 5.1 km x 5.1 km x cos(38.1 deg)
    geo = json.loads(chips.schema.metadata[b"geo"])
    assert geo["columns"]["geometry"]["crs"]["id"]["code"] == 4326
    first = chips.to_pylist()[0]
    a, b = shapely.from_wkb(first["geometry"]), shapely.from_wkb(first["geometry_crs84"])
    assert a.bounds[0] == pytest.approx(t.c) and shapely.hausdorff_distance(a, b) < 1e-9  # lon/lat
    vecs = np.stack(chips["embedding"].to_numpy(zero_copy_only=False))
    assert np.isfinite(vecs).all() and vecs.std(0).mean() > 1e-3  # chips differ


def test_eurosat_ms_tiles(micro, real_data, tmp_path):
    d = real_data("eurosat_ms")
    vectors = {}
    for cls in ("Forest", "SeaLake", "Industrial"):
        p = d / cls / f"{cls}_1.tif"
        inp = {"s2": rs.RasterInput("sentinel2_l1c", [str(p)], ["2017-06-01"], bands=EUROSAT_BANDS)}
        res = micro.embed_rasters(inp, tmp_path / f"{cls}.tif", npz=tmp_path / f"{cls}.npz",
                                  tile=64, overlap=0, progress=False)  # fmt: skip
        assert any("modalities not given: s1" in w for w in res.warnings)
        x, m = read_cog(res.out)
        with rasterio.open(p) as src:
            assert m["crs"] == src.crs and m["transform"].c == src.transform.c
        assert m["shape"] == (16, 16) and not np.isnan(x).any()
        vectors[cls] = np.load(tmp_path / f"{cls}.npz")["chip_embedding"][0]
    assert not np.allclose(vectors["Forest"], vectors["SeaLake"], atol=1e-3)
