"""The STAC Item written beside a run's outputs (issue 18)."""

from __future__ import annotations

import json

import numpy as np

from rsfm_core.io.stac import _signed_area

from .conftest import S2_DATES, inputs_of, read_cog

OPTS = dict(tile=32, overlap=8, batch=4, progress=False)


def test_stac_item_describes_the_run_and_its_outputs(micro, scene, tmp_path):
    need = tmp_path / "out"
    need.mkdir()
    res = micro.embed_rasters(inputs_of(scene), need / "e.tif", parquet=need / "c.parquet",
                              npz=need / "e.npz", **OPTS)  # fmt: skip
    item = json.loads((need / "e.stac.json").read_text())
    _, cog = read_cog(res.out)
    assert item["type"] == "Feature" and item["stac_version"] == "1.0.0" and item["id"] == "e"
    assert item["links"] == [] and item["stac_extensions"][0].endswith(
        "projection/v2.0.0/schema.json"
    )
    assets = item["assets"]
    assert {k: a["href"] for k, a in assets.items()} == {
        "embeddings": "e.tif", "chips": "c.parquet", "npz": "e.npz"}  # fmt: skip
    assert "cloud-optimized" in assets["embeddings"]["type"]
    p = item["properties"]
    assert p["rsfm:model"] == cog["tags"]["RSFM_MODEL"] == "rsfm_tiny"
    assert p["rsfm:model_sha256"] == cog["tags"]["RSFM_MODEL_SHA256"]
    assert p["rsfm:version"] == cog["tags"]["RSFM_VERSION"] and p["rsfm:model_verified"] is False
    assert p["rsfm:features"] == 16 and p["rsfm:token_px"] == 4 and p["rsfm:dtype"] == "float16"
    assert p["rsfm:inputs"]["s2"]["dates"] == list(S2_DATES)
    assert p["rsfm:inputs"]["s1"]["sensor"] == "sentinel1_grd"
    assert p["datetime"] is None
    assert p["start_datetime"] == f"{S2_DATES[0]}T00:00:00Z"
    assert p["end_datetime"] == f"{S2_DATES[-1]}T23:59:59Z"
    assert p["proj:code"] == "EPSG:32633" and p["proj:shape"] == list(cog["shape"])
    assert p["proj:transform"] == list(cog["transform"])[:6] and p["gsd"] == 40.0
    ring = item["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and _signed_area(ring) > 0  # closed, counterclockwise
    lon, lat = np.array(ring).T
    x0, y0, x1, y1 = item["bbox"]
    assert (x0, y0, x1, y1) == (lon.min(), lat.min(), lon.max(), lat.max())
    assert 14.9 < x0 < x1 < 15.1 and 41.5 < y0 < y1 < 41.6  # UTM 33N near (500 km, 4600 km)


def test_stac_item_is_reproducible_and_follows_the_first_output(micro, scene, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        micro.embed_rasters(inputs_of(scene), parquet=tmp_path / d / "chips.parquet", **OPTS)
    one, two = ((tmp_path / d / "chips.stac.json").read_bytes() for d in "ab")
    assert one == two
    item = json.loads(one)
    assert list(item["assets"]) == ["chips"] and item["id"] == "chips"
