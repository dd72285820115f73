"""Bad inputs fail before the first tile with an error naming the file; a run that
fails midway leaves no output that looks complete."""

from __future__ import annotations

import numpy as np
import pytest

import rsfm_core as rs
from rsfm_core.inference import MissingInputWarning
from rsfm_core.io import RasterError

from .conftest import S2_DATES, inputs_of, smooth, write_tif

OPTS = dict(tile=32, overlap=8, batch=4, progress=False)


def _s2(scene):
    return [str(p) for p in scene["s2"]]


def test_missing_file(micro, scene, tmp_path):
    bad = str(tmp_path / "nope.tif")
    with pytest.raises(RasterError, match=r"nope\.tif: file not found"):
        micro.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", [_s2(scene)[0], bad])},
                            tmp_path / "o.tif", **OPTS)  # fmt: skip


def test_mismatched_grid(micro, scene, tmp_path):
    other = write_tif(tmp_path / "s1_utm34.tif", smooth(2, 80, 72, 3, -20, -5), crs="EPSG:32634")
    with pytest.raises(RasterError, match=r"s1_utm34\.tif: CRS .* differs"):
        micro.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", _s2(scene)),
                             "s1": rs.RasterInput("sentinel1_grd", [str(other)], ["2021-05-02"])},
                            tmp_path / "o.tif", **OPTS)  # fmt: skip
    far = write_tif(
        tmp_path / "far.tif", smooth(2, 80, 72, 3, -20, -5), origin=(700000.0, 4600000.0)
    )
    with pytest.raises(RasterError, match=r"far\.tif: does not overlap"):
        micro.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", _s2(scene)),
                             "s1": rs.RasterInput("sentinel1_grd", [str(far)], ["2021-05-02"])},
                            tmp_path / "o.tif", **OPTS)  # fmt: skip


def test_wrong_band_count_for_the_sensor(micro, tmp_path):
    five = write_tif(
        tmp_path / "five.tif", (smooth(5, 32, 32, 1, 0.1, 0.3) * 1e4).astype(np.uint16)
    )
    with pytest.raises(RasterError, match=r"five\.tif: 5 bands, but sensor 'sentinel2_l2a' has 12"):
        micro.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", [str(five)], ["2021-05-01"])},
                            tmp_path / "o.tif", **OPTS)  # fmt: skip


def test_a_crs_without_geotransform_is_refused_before_the_first_tile(micro, scene, tmp_path):
    import rasterio

    arr = (smooth(12, 32, 32, 1, 0.1, 0.3) * 1e4).astype(np.uint16)
    bad = tmp_path / "nogt.tif"
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        with rasterio.open(bad, "w", driver="GTiff", width=32, height=32, count=12,
                           dtype="uint16", crs="EPSG:32633") as ds:  # fmt: skip
            ds.write(arr)
    with pytest.raises(RasterError, match=r"nogt\.tif: has a CRS .* but no geotransform"):
        micro.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", [str(bad)], ["2021-05-01"])},
                            tmp_path / "o.tif", **OPTS)  # fmt: skip
    assert not (tmp_path / "o.tif").exists()


def test_unknown_sensor(micro, scene, tmp_path):
    with pytest.raises(RasterError, match=r"s2_0\.tif: .*sentinel9"):
        micro.embed_rasters(
            {"s2": rs.RasterInput("sentinel9", _s2(scene))}, tmp_path / "o.tif", **OPTS
        )


def test_dates_missing(micro, tmp_path):
    p = write_tif(
        tmp_path / "undated.tif", (smooth(12, 32, 32, 1, 0.1, 0.3) * 1e4).astype(np.uint16)
    )
    with pytest.raises(RasterError, match=r"undated\.tif: no acquisition date"):
        micro.embed_rasters(
            {"s2": rs.RasterInput("sentinel2_l2a", [str(p)])}, tmp_path / "o.tif", **OPTS
        )


@pytest.mark.parametrize("where", ["no/such/dir/o.tif", "."])
def test_output_not_writable(micro, scene, tmp_path, where):
    with pytest.raises(RasterError, match="does not exist|is a folder"):
        micro.embed_rasters(inputs_of(scene), tmp_path / where, **OPTS)


def test_unknown_modality_and_option(micro, scene, tmp_path):
    with pytest.raises(RasterError, match="not a modality of this checkpoint"):
        micro.embed_rasters(
            {"optical": rs.RasterInput("landsat8_oli", _s2(scene))}, tmp_path / "o.tif"
        )
    with pytest.raises(TypeError, match="tile_size"):
        micro.embed_rasters(inputs_of(scene), tmp_path / "o.tif", tile_size=64)
    with pytest.raises(ValueError, match="multiples of the token size"):
        micro.embed_rasters(
            inputs_of(scene), tmp_path / "o.tif", tile=30, overlap=8, progress=False
        )


def test_missing_bands_and_modalities_are_named(micro, tmp_path):
    rgbn = ["B02", "B03", "B04", "B08"]
    p = write_tif(tmp_path / "rgbn.tif", (smooth(4, 32, 32, 1, 0.1, 0.3) * 1e4).astype(np.uint16),
                  descriptions=rgbn, tags={"RSFM_DATE": S2_DATES[0]})  # fmt: skip
    with pytest.warns(MissingInputWarning) as rec:
        res = micro.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", [str(p)])},
                                  tmp_path / "o.tif", **OPTS)  # fmt: skip
    msgs = [str(w.message) for w in rec]
    # a whole modality left out is normal use: logged and reported, not warned
    assert not any("modalities not given" in m for m in msgs)
    assert any("modalities not given: s1 (sentinel1_grd)" in m for m in res.warnings)
    assert any("bands B01, B05, B06, B07, B8A, B09, B11, B12 of sentinel2_l2a are missing" in m
               for m in msgs)  # fmt: skip
    assert res.warnings[1:] == msgs and res.out.exists()


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fail_at", [2, "finalize"])
def test_failure_midway_leaves_no_complete_looking_output(
    micro, scene, tmp_path, monkeypatch, fail_at
):
    out = tmp_path / "emb.tif"
    out.write_bytes(b"an older, complete run")
    calls = {"n": 0}
    forward = micro.model.forward

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise Boom("device lost")
        return forward(*a, **k)

    monkeypatch.setattr(micro.model, "forward", flaky)
    if fail_at == "finalize":
        import rsfm_core.io.geoparquet as gp

        monkeypatch.setattr(
            gp.ChipWriter, "finish", lambda *a: (_ for _ in ()).throw(Boom("disk full"))
        )
    with pytest.raises(Boom):
        micro.embed_rasters(inputs_of(scene), out, parquet=tmp_path / "c.parquet",
                            npz=tmp_path / "e.npz", **OPTS)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.tif"]  # no temporaries
    assert out.read_bytes() == b"an older, complete run"
