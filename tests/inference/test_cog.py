"""The streaming COG writer (issue 18: no finalize pass) and the COG layout check."""

from __future__ import annotations

import numpy as np
import pytest

from rsfm_core.io.cog import StreamingCog, downsample2, read_ifds, validate_cog
from rsfm_core.sample import Grid

from .conftest import inputs_of, need_rasterio

OPTS_SMALL = dict(tile=32, overlap=8, batch=4, progress=False)

GRID = (40.0, 0.0, 500000.0, 0.0, -40.0, 4600000.0)


def _map(h: int, w: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(d, h, w)).astype(np.float32)
    x[:, -5:, -7:] = np.nan  # a nodata corner
    x[:, :3, :] = np.nan  # and whole nodata rows
    return x


def _write(path, x, dtype="float16", block=128, step=13):
    d, h, w = x.shape
    cog = StreamingCog(path, Grid("EPSG:32633", GRID, h, w), d, dtype, block)
    for r in range(0, h, step):  # rows arrive in uneven chunks, as from the stream
        cog.write(r, x[:, r : r + step])
    scale = offset = None
    if dtype == "int8":
        lo, hi = np.nanmin(x, axis=(1, 2)), np.nanmax(x, axis=(1, 2))
        scale, offset = (hi - lo) / 254, (hi + lo) / 2
    cog.close({"RSFM_X": "1"}, scale, offset)
    return path


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_streamed_cog_is_valid_and_gdal_reads_it_as_written(tmp_path, dtype):
    need_rasterio()
    import rasterio

    x = _map(300, 520, 6)
    path = _write(tmp_path / "m.tif", x, dtype)
    assert validate_cog(path) == []
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1) == [2, 4, 8] and ds.block_shapes[0] == (128, 128)
        assert ds.tags()["RSFM_X"] == "1" and ds.descriptions[0] == "emb_000"
        assert ds.crs.to_epsg() == 32633 and tuple(ds.transform)[:6] == GRID
        y = ds.read().astype(np.float64)
        if dtype == "int8":
            assert ds.nodata == -128
            s, o = np.array(ds.scales)[:, None, None], np.array(ds.offsets)[:, None, None]
            y = np.where(y == -128, np.nan, y * s + o)
            tol = s / 2 + 1e-6
        else:
            assert np.isnan(ds.nodata)
            tol = 2e-3 * np.abs(x) + 1e-6 if dtype == "float16" else 0
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    assert np.all(np.abs(y - x)[~np.isnan(x)] <= np.broadcast_to(tol, x.shape)[~np.isnan(x)])
    # overviews: NaN-skipping 2 x 2 means of the whole map (not of the streamed chunks)
    want = x
    for level in range(3):
        want = downsample2(want if want.shape[1] % 2 == 0 else np.concatenate(
            [want, np.full_like(want[:, :1], np.nan)], axis=1))  # fmt: skip
        with rasterio.open(path, overview_level=level) as ov:
            got = ov.read().astype(np.float64)
            if dtype == "int8":
                got = np.where(got == -128, np.nan, got * s + o)
        assert got.shape == want.shape
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        atol = float(np.max(s)) / 2 + 1e-6 if dtype == "int8" else 1e-6
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=atol, equal_nan=True)


def test_validate_cog_agrees_with_gdal_on_its_own_and_on_non_cogs(tmp_path):
    need_rasterio()
    import rasterio
    from affine import Affine
    from rasterio.shutil import copy as rio_copy

    x = np.nan_to_num(_map(600, 600, 2))
    prof = dict(driver="GTiff", height=600, width=600, count=2, dtype="float32",
                transform=Affine(*GRID), crs="EPSG:32633")  # fmt: skip
    with rasterio.open(tmp_path / "strips.tif", "w", **prof) as ds:
        ds.write(x)
    assert any("not tiled" in e for e in validate_cog(tmp_path / "strips.tif"))
    with rasterio.open(tmp_path / "tiled.tif", "w", tiled=True, **prof) as ds:
        ds.write(x)
    with rasterio.open(tmp_path / "tiled.tif", "r+") as ds:
        ds.build_overviews([2, 4])  # overviews appended after the data: not a COG
    errs = validate_cog(tmp_path / "tiled.tif")
    assert any("comes before" in e for e in errs), errs
    with rasterio.open(tmp_path / "tiled.tif") as src:
        rio_copy(src, tmp_path / "gdal_cog.tif", driver="COG", blocksize=256)
    assert validate_cog(tmp_path / "gdal_cog.tif") == []  # GDAL's own COG driver
    assert validate_cog(tmp_path / "missing.tif")[0].startswith("cannot read")


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_a_bigtiff_cog_when_the_file_needs_64_bit_offsets(tmp_path, monkeypatch, dtype):
    need_rasterio()
    import rasterio

    from rsfm_core.io import cog

    monkeypatch.setattr(cog, "BIGTIFF_AT", 0)  # as if the data were over 4 GiB
    x = _map(150, 260, 4)
    path = _write(tmp_path / "m.tif", x, dtype)
    with open(path, "rb") as f:
        assert f.read(4) == b"II+\x00"  # BigTIFF
    assert validate_cog(path) == []
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1) == [2, 4]
        y = ds.read(1).astype(np.float64)
        if dtype == "int8":
            y = np.where(y == -128, np.nan, y * ds.scales[0] + ds.offsets[0])
    np.testing.assert_allclose(y, x[0], rtol=2e-3, atol=0.02, equal_nan=True)


def test_validate_cog_sees_a_broken_tile_frame(tmp_path):
    path = _write(tmp_path / "m.tif", _map(40, 50, 3), "float32", block=32)
    assert validate_cog(path) == []
    main = read_ifds(path)[0]
    first = int.from_bytes(main[324][2][:4], "little")
    with open(path, "r+b") as f:
        f.seek(first - 4)
        f.write(b"\xff\xff\xff\xff")
    assert any("leader" in e for e in validate_cog(path))


def test_rows_must_come_in_order(tmp_path):
    cog = StreamingCog(tmp_path / "m.tif", Grid("EPSG:32633", GRID, 20, 20), 2, "float32")
    cog.write(0, np.zeros((2, 5, 20), np.float32))
    with pytest.raises(ValueError, match="in order: got row 9, expected 5"):
        cog.write(9, np.zeros((2, 5, 20), np.float32))
    cog.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_run_writes_a_valid_cog_with_no_intermediate(micro, scene, tmp_path, monkeypatch):
    """One rank: the COG is streamed; the token intermediate (TiffSink) is never made."""
    from rsfm_core.io import writers

    monkeypatch.setattr(writers, "TiffSink", None)  # would fail if used
    res = micro.embed_rasters(inputs_of(scene), tmp_path / "e.tif", **OPTS_SMALL)
    assert validate_cog(tmp_path / "e.tif") == []
    assert res.seconds["finalize"] < res.seconds["total"]
