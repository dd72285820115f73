"""``rsfm embed``: flags, manifests, STAC items, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("yaml")

import yaml

from rsfm_core.cli import main
from rsfm_core.inference import RasterInput

from .conftest import S2_DATES, micro_embedder, read_cog


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    micro_embedder().model.save_pretrained(d)
    return d


def test_flags(ckpt, scene, tmp_path, capsys):
    s2, s1 = (",".join(str(p) for p in scene[k]) for k in ("s2", "s1"))
    rc = main([
        "embed", "--checkpoint", str(ckpt), "--input", f"s2=sentinel2_l2a:{s2}",
        "--dates", f"s2={','.join(S2_DATES)}", "--input", f"s1=sentinel1_grd:{s1}",
        "--out", str(tmp_path / "e.tif"), "--parquet", str(tmp_path / "c.parquet"),
        "--tile", "32", "--overlap", "8", "--dtype", "int8", "--no-progress",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "9 tiles (8 computed, 1 without data)" in out and str(tmp_path / "e.tif") in out
    assert read_cog(tmp_path / "e.tif")[1]["dtype"] == "int8"


def test_manifest_yaml_with_stac_items_equals_flags(ckpt, scene, tmp_path, capsys):
    items = []
    for t, p in enumerate(scene["s2"]):
        item = {"type": "Feature", "id": f"s2-{t}", "properties": {"datetime": f"{S2_DATES[t]}T10:30:00Z"},
                "assets": {"visual": {"href": "thumb.png"},
                           "reflectance": {"href": str(p), "eo:bands": [{"name": b} for b in (
                               "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12".split())]}}}  # fmt: skip
        items.append(tmp_path / f"item{t}.json")
        items[-1].write_text(json.dumps(item))
    assert RasterInput.from_stac(items, "sentinel2_l2a").paths == [[str(p)] for p in scene["s2"]]
    man = {"inputs": {"s2": {"sensor": "sentinel2_l2a", "stac": [str(i) for i in items]},
                      "s1": {"sensor": "sentinel1_grd", "paths": [str(p) for p in scene["s1"]]}},
           "options": {"tile": 32, "overlap": 8, "dtype": "float32"}}  # fmt: skip
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(man))
    assert main(["embed", "--checkpoint", str(ckpt), "--manifest", str(tmp_path / "in.yaml"),
                 "--out", str(tmp_path / "m.tif"), "--no-progress"]) == 0  # fmt: skip
    ref = micro_embedder().embed_rasters(
        {"s2": RasterInput("sentinel2_l2a", [str(p) for p in scene["s2"]]),
         "s1": RasterInput("sentinel1_grd", [str(p) for p in scene["s1"]])},
        tmp_path / "r.tif", tile=32, overlap=8, dtype="float32", progress=False)  # fmt: skip
    np.testing.assert_array_equal(read_cog(tmp_path / "m.tif")[0], read_cog(ref.out)[0])


def test_errors_exit_2_naming_the_file(ckpt, tmp_path, capsys):
    rc = main(["embed", "--checkpoint", str(ckpt), "--input", "s2=sentinel2_l2a:missing.tif",
               "--out", str(tmp_path / "e.tif"), "--no-progress"])  # fmt: skip
    assert rc == 2 and "missing.tif: file not found" in capsys.readouterr().err
    rc = main(["embed", "--input", "s2=sentinel2_l2a:a.tif", "--out", str(tmp_path / "e.tif")])
    assert rc == 2 and "--checkpoint" in capsys.readouterr().err
    rc = main(["embed", "--checkpoint", str(ckpt), "--input", "s2:a.tif", "--out", "e.tif"])
    assert rc == 2 and "expected NAME=VALUE" in capsys.readouterr().err


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    assert "rsfm embed --checkpoint ckpt/" in capsys.readouterr().out
