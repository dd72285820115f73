"""GeoTIFF reading: physical units, validity, band order, grids, windows, tiles, errors.

Rasters are written with ``rsfm_core.io.write_geotiff`` into ``tmp_path`` from fixed-seed
random values (never constant fields, which hide band-order bugs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rsfm_core import io
from rsfm_core.io import RasterError, read_modality, read_sample, tiles, write_geotiff
from rsfm_core.sample import Grid, to_days
from rsfm_core.sensors import get

S2 = get("sentinel2_l1c").band_names  # B01..B08, B8A, B09..B12
EUROSAT_ORDER = [
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
]  # fmt: skip
DAY = "2021-07-14"


def _grid(h=32, w=40, res=10.0, x0=500000.0, y0=4_000_000.0, crs="EPSG:32633") -> Grid:
    return Grid(crs, (res, 0.0, x0, 0.0, -res, y0), h, w)


def _dn(rng, c, h, w, lo=1, hi=10000, dtype=np.uint16) -> np.ndarray:
    return rng.integers(lo, hi, (c, h, w)).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _s2_file(tmp_path, rng, name="s2.tif", **kw):
    g = kw.pop("grid", _grid())
    arr = _dn(rng, 13, g.height, g.width)
    return write_geotiff(tmp_path / name, arr, g, **kw), arr, g


# ---------------------------------------------------------------------------- round trips


def test_round_trip_physical_units_and_date_tag(tmp_path, rng):
    path, arr, g = _s2_file(tmp_path, rng, tags={"RSFM_DATE": DAY})
    d = read_modality(path, "sentinel2_l1c")
    assert d.pixels.shape == (1, 13, g.height, g.width) and d.pixels.dtype == torch.float32
    assert d.bands == S2 and d.sensor == "sentinel2_l1c" and d.grid == g
    np.testing.assert_allclose(d.pixels[0].numpy(), arr * np.float32(1e-4), rtol=1e-6)
    assert bool(d.valid.all()) and d.dates.tolist() == [to_days(DAY)]


def test_several_dates_stack_on_t(tmp_path, rng):
    paths = [_s2_file(tmp_path, rng, f"t{i}.tif")[0] for i in range(3)]
    dates = ["2020-01-01", "2020-02-01", "2020-03-01"]
    d = read_modality(paths, "sentinel2_l1c", dates)
    assert d.pixels.shape[:2] == (3, 13) and d.dates.tolist() == [to_days(x) for x in dates]
    assert not np.array_equal(d.pixels[0].numpy(), d.pixels[1].numpy())


@pytest.mark.parametrize(
    "tag,value,want",
    [
        ("ACQUISITION_DATE", "2019-05-17T10:31:00Z", "2019-05-17"),
        ("DATE", "20190517", "2019-05-17"),
        ("TIFFTAG_DATETIME", "2019:05:17 10:31:00", "2019-05-17"),
    ],
)
def test_date_tags(tmp_path, rng, tag, value, want):
    path, _, _ = _s2_file(tmp_path, rng, tags={tag: value})
    assert read_modality(path, "sentinel2_l1c").dates.tolist() == [to_days(want)]


def test_nodata_nan_inf_are_invalid_per_pixel_any_band(tmp_path, rng):
    g = _grid()
    arr = rng.normal(-12, 4, (2, g.height, g.width)).astype(np.float32)
    arr[0, 3, 4] = np.nan  # VV only
    arr[1, 5, 6] = np.inf  # VH only
    arr[1, 7, 8] = -9999.0  # the file's nodata
    path = write_geotiff(tmp_path / "s1.tif", arr, g, nodata=-9999.0)
    d = read_modality(path, "sentinel1_grd", [DAY])
    bad = [(3, 4), (5, 6), (7, 8)]
    for r, c in bad:
        assert not d.valid[0, r, c] and bool((d.pixels[0, :, r, c] == 0).all())
    assert int((~d.valid).sum()) == len(bad)
    ok = d.valid[0].numpy()
    np.testing.assert_allclose(d.pixels[0].numpy()[:, ok], arr[:, ok])


def test_sensor_nodata_applies_without_file_nodata_and_override_replaces_it(tmp_path, rng):
    path, arr, g = _s2_file(tmp_path, rng)
    arr[4, 10, 11] = 0  # S2's nodata, in one band only
    arr[0, 1, 2] = 7
    write_geotiff(path, arr, g)
    d = read_modality(path, "sentinel2_l1c", [DAY])
    assert not d.valid[0, 10, 11] and d.valid[0, 1, 2] and int((~d.valid).sum()) == 1
    d = read_modality(path, "sentinel2_l1c", [DAY], nodata=7)
    assert d.valid[0, 10, 11] and not d.valid[0, 1, 2]


def test_cloud_masks_raster_qa_codes_and_callable(tmp_path, rng):
    path, arr, g = _s2_file(tmp_path, rng)
    qa = rng.integers(0, 12, (g.height, g.width)).astype(np.uint8)  # SCL-like codes
    qpath = write_geotiff(tmp_path / "scl.tif", qa, g)
    d = read_modality(path, "sentinel2_l1c", [DAY], cloud_masks=[qpath])
    np.testing.assert_array_equal(d.valid[0].numpy(), qa == 0)
    assert float(d.pixels[0][:, qa != 0].abs().max()) == 0.0
    scl_cloudy = (3, 8, 9, 10)
    fn = lambda q: np.isin(q.astype(int), scl_cloudy)
    d = read_modality(path, "sentinel2_l1c", [DAY], cloud_masks=[(qpath, fn)])
    np.testing.assert_array_equal(d.valid[0].numpy(), ~np.isin(qa, scl_cloudy))
    coarse = rng.integers(0, 2, (g.height // 2, g.width // 2)).astype(np.uint8)  # 20 m mask
    cpath = write_geotiff(tmp_path / "mask20.tif", coarse, _grid(16, 20, 20.0))
    d = read_modality(path, "sentinel2_l1c", [DAY], cloud_masks=cpath)
    np.testing.assert_array_equal(d.valid[0].numpy(), np.kron(coarse, np.ones((2, 2))) == 0)
    bright = lambda px: px[1] > 0.5  # B02 reflectance, physical units, sensor order
    d = read_modality(path, "sentinel2_l1c", [DAY], cloud_masks=bright)
    np.testing.assert_array_equal(d.valid[0].numpy(), arr[1] * 1e-4 <= 0.5)


# ---------------------------------------------------------------------------- band layouts


def test_band_reordering_file_order_is_not_output_order(tmp_path, rng):
    path, arr, _ = _s2_file(tmp_path, rng)  # written in EuroSAT order: B8A last
    d = read_modality(path, "sentinel2_l1c", [DAY], bands=EUROSAT_ORDER)
    assert d.bands == S2 and d.bands.index("B8A") == d.bands.index("B08") + 1
    for i, name in enumerate(EUROSAT_ORDER):
        np.testing.assert_allclose(d.pixels[0, S2.index(name)].numpy(), arr[i] * np.float32(1e-4))


def test_band_descriptions_resolve_and_none_skips_a_band(tmp_path, rng):
    g = _grid()
    arr = _dn(rng, 4, g.height, g.width)
    path = write_geotiff(tmp_path / "rgbn.tif", arr, g, band_descriptions=["B8", "B4", "B3", "B2"])
    d = read_modality(path, "sentinel2_l2a", [DAY])
    assert d.bands == ("B02", "B03", "B04", "B08")
    np.testing.assert_allclose(d.pixels[0, 0].numpy(), arr[3] * np.float32(1e-4))
    d = read_modality(path, "sentinel2_l2a", [DAY], bands=["nir", None, "green", "blue"])
    assert d.bands == ("B02", "B03", "B08")
    np.testing.assert_allclose(d.pixels[0, 2].numpy(), arr[0] * np.float32(1e-4))


def test_one_file_per_band_layout(tmp_path, rng):
    g = _grid()
    names = ["B04", "B02", "B08", "B03"]
    arrs = {n: _dn(rng, 1, g.height, g.width) for n in names}
    paths = [write_geotiff(tmp_path / f"{n}.tif", arrs[n], g) for n in names]
    d = read_modality([paths, paths], "sentinel2_l2a", ["2020-01-01", "2020-01-11"], bands=names)
    assert d.bands == ("B02", "B03", "B04", "B08") and d.pixels.shape[:2] == (2, 4)
    for i, n in enumerate(d.bands):
        np.testing.assert_allclose(d.pixels[1, i].numpy(), arrs[n][0] * np.float32(1e-4))


def _s2_groups(tmp_path, rng, h=24, w=30, const20=None):
    """A 10 m group (B02 B03 B04 B08) and a 20 m group (B05 B06) over one extent."""
    g10, g20 = _grid(h, w, 10.0), _grid(h // 2, w // 2, 20.0)
    a10 = _dn(rng, 4, h, w)
    a20 = _dn(rng, 2, h // 2, w // 2) if const20 is None else np.full((2, h // 2, w // 2), const20)
    p10 = write_geotiff(tmp_path / "b10m.tif", a10, g10)
    p20 = write_geotiff(tmp_path / "b20m.tif", a20.astype(np.uint16), g20)
    return [p20, p10], [["B05", "B06"], ["B02", "B03", "B04", "B08"]], a10, a20, g10


def test_multiresolution_groups_nearest_replicates_2x2_blocks(tmp_path, rng):
    paths, bands, a10, a20, g10 = _s2_groups(tmp_path, rng)
    d = read_modality([paths], "sentinel2_l2a", [DAY], bands=bands, resampling="nearest")
    assert d.grid == g10 and d.bands == ("B02", "B03", "B04", "B05", "B06", "B08")
    np.testing.assert_allclose(d.pixels[0, 0].numpy(), a10[0] * np.float32(1e-4))
    up = np.repeat(np.repeat(a20, 2, axis=1), 2, axis=2) * np.float32(1e-4)
    np.testing.assert_allclose(d.pixels[0, 3:5].numpy(), up, rtol=1e-6)
    assert bool(d.valid.all()) and d.meta["resampling"][str(paths[0])] == "nearest"


def test_multiresolution_bilinear_keeps_constants_and_interpolates_ramps(tmp_path, rng):
    paths, bands, *_ = _s2_groups(tmp_path, rng, const20=2345)
    d = read_modality([paths], "sentinel2_l2a", [DAY], bands=bands)  # default: bilinear
    np.testing.assert_allclose(d.pixels[0, 3:5].numpy(), 0.2345, rtol=1e-5)
    # a ramp along x at 20 m: the 10 m pixel centre at col c sits at 20 m col (c+.5)/2-.5
    g20 = _grid(12, 15, 20.0)
    ramp = np.tile(1000 + 100 * np.arange(15), (2, 12, 1)).astype(np.uint16)
    write_geotiff(paths[0], ramp, g20)
    d = read_modality([paths], "sentinel2_l2a", [DAY], bands=bands)
    cols = np.arange(2, 28)
    want = (1000 + 100 * ((cols + 0.5) / 2 - 0.5)) * 1e-4
    np.testing.assert_allclose(d.pixels[0, 3, 5, cols].numpy(), want, rtol=1e-5)


def test_20m_nodata_pixel_invalidates_exactly_its_four_10m_pixels(tmp_path, rng):
    paths, bands, a10, a20, g10 = _s2_groups(tmp_path, rng)
    a20[1, 4, 5] = 0
    write_geotiff(paths[0], a20, _grid(12, 15, 20.0))
    d = read_modality([paths], "sentinel2_l2a", [DAY], bands=bands)
    bad = np.zeros((24, 30), bool)
    bad[8:10, 10:12] = True
    np.testing.assert_array_equal(d.valid[0].numpy(), ~bad)


def test_sar_downsampling_averages_linear_power(tmp_path, rng):
    g = _grid(8, 8, 10.0)
    db = rng.normal(-14, 5, (2, 8, 8)).astype(np.float32)
    path = write_geotiff(tmp_path / "s1.tif", db, g)
    d = read_modality(path, "sentinel1_grd", [DAY], grid=_grid(4, 4, 20.0))
    lin = (10 ** (db / 10)).reshape(2, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(d.pixels[0].numpy(), 10 * np.log10(lin), atol=1e-3)


# ---------------------------------------------------------------------------- windows


@pytest.mark.parametrize("resampled", [False, True])
def test_window_equals_crop_of_full_read(tmp_path, rng, resampled):
    if resampled:
        paths, bands, *_ = _s2_groups(tmp_path, rng)
        args = ([paths], "sentinel2_l2a", [DAY])
        kw = {"bands": bands}
    else:
        args, kw = (_s2_file(tmp_path, rng)[0], "sentinel2_l1c", [DAY]), {}
    full = read_modality(*args, **kw)
    win = (5, 7, 11, 13)
    part = read_modality(*args, window=win, **kw)
    crop = full.crop(*win)
    np.testing.assert_allclose(part.pixels.numpy(), crop.pixels.numpy(), rtol=1e-6)
    assert part.grid == crop.grid and bool((part.valid == crop.valid).all())


def test_boundless_window_pads_invalid(tmp_path, rng):
    path, arr, g = _s2_file(tmp_path, rng)
    d = read_modality(path, "sentinel2_l1c", [DAY], window=(-4, 30, 16, 16))
    inside = np.zeros((16, 16), bool)
    inside[4:, :10] = True
    np.testing.assert_array_equal(d.valid[0].numpy(), inside)
    np.testing.assert_allclose(d.pixels[0, :, 4:, :10].numpy(), arr[:, :12, 30:] * np.float32(1e-4))
    assert float(d.pixels[0][:, ~inside].abs().max()) == 0.0
    out = read_modality(path, "sentinel2_l1c", [DAY], window=(100, 100, 8, 8))
    assert not bool(out.valid.any())


def test_require_valid_raises_on_all_nodata_window(tmp_path, rng):
    path, arr, g = _s2_file(tmp_path, rng)
    arr[:, :8, :8] = 0
    write_geotiff(path, arr, g)
    d = read_modality(path, "sentinel2_l1c", [DAY], window=(0, 0, 8, 8))
    assert not bool(d.valid.any())
    with pytest.raises(RasterError, match="all-nodata window") as e:
        read_modality(path, "sentinel2_l1c", [DAY], window=(0, 0, 8, 8), require_valid=True)
    assert str(path) in str(e.value)


# ---------------------------------------------------------------------------- grids


def test_different_crs_needs_reproject(tmp_path, rng):
    p1, _, _ = _s2_file(tmp_path, rng, "a.tif")
    g2 = Grid("EPSG:4326", (1e-4, 0, 15.0, 0, -1e-4, 36.14), 32, 40)  # near UTM 33N's x0
    p2 = write_geotiff(tmp_path / "b.tif", _dn(rng, 13, 32, 40), g2)
    g_utm = io.open_info(p1)["grid"]
    with pytest.raises(RasterError, match="reproject=True") as e:
        read_modality(p2, "sentinel2_l1c", [DAY], grid=g_utm)
    assert str(p2) in str(e.value)
    g_here = Grid("EPSG:32633", (10.0, 0, 500000.0, 0, -10.0, 4_000_000.0), 30, 30)
    with pytest.raises(RasterError, match="does not overlap"):
        read_modality(p2, "sentinel2_l1c", [DAY], grid=g_here, reproject=True)
    from rasterio.warp import transform_bounds

    b = transform_bounds("EPSG:4326", "EPSG:32633", *io.open_info(p2)["bounds"])
    target = Grid("EPSG:32633", (10.0, 0, b[0], 0, -10.0, b[3]), 20, 20)
    d = read_modality(p2, "sentinel2_l1c", [DAY], grid=target, reproject=True)
    assert d.grid.crs == "EPSG:32633" and float(d.valid.float().mean()) > 0.9
    px = d.pixels[0][:, d.valid[0]]
    assert 0.0 < float(px.min()) and float(px.max()) <= 1.0


def test_no_crs_needs_allow_no_crs(tmp_path, rng):
    g = Grid(None, (2.0, 0, 100.0, 0, -2.0, 500.0), 16, 16)
    path = write_geotiff(tmp_path / "nocrs.tif", _dn(rng, 13, 16, 16), g)
    with pytest.raises(RasterError, match="allow_no_crs=True") as e:
        read_modality(path, "sentinel2_l1c", [DAY])
    assert str(path) in str(e.value)
    d = read_modality(path, "sentinel2_l1c", [DAY], allow_no_crs=True)
    assert d.grid.crs is None and bool(d.valid.all())


def test_non_overlapping_grids_name_both_files(tmp_path, rng):
    g = _grid()
    p1 = write_geotiff(tmp_path / "here.tif", _dn(rng, 4, 32, 40), g)
    far = _grid(x0=g.transform[2] + 10_000)
    p2 = write_geotiff(tmp_path / "there.tif", _dn(rng, 2, 32, 40), far)
    bands = [["B02", "B03", "B04", "B08"], ["B05", "B06"]]
    with pytest.raises(RasterError, match="does not overlap") as e:
        read_modality([[p1, p2]], "sentinel2_l2a", [DAY], bands=bands)
    assert str(p1) in str(e.value) and str(p2) in str(e.value)
    with pytest.raises(RasterError, match="does not overlap") as e:
        read_sample(
            {
                "a": {"paths": p1, "sensor": "sentinel2_l2a", "dates": DAY, "bands": bands[0]},
                "b": {"paths": p2, "sensor": None},
            }
        )
    assert str(p1) in str(e.value) and str(p2) in str(e.value)


# ---------------------------------------------------------------------------- read_sample


def test_read_sample_keeps_native_resolution_on_one_extent(tmp_path, rng):
    p2, _, g10 = _s2_file(tmp_path, rng, "s2.tif", grid=_grid(32, 40, 10.0))
    s1 = rng.normal(-12, 4, (2, 16, 20)).astype(np.float32)
    p1 = write_geotiff(tmp_path / "s1.tif", s1, _grid(16, 20, 20.0))
    lab = rng.integers(0, 3, (32, 40)).astype(np.int16)
    pl = write_geotiff(tmp_path / "label.tif", lab, g10)
    mods = {
        "s2": (p2, "sentinel2_l1c", DAY),
        "s1": {"paths": p1, "sensor": "sentinel1_grd", "dates": [DAY]},
        "label": {"paths": pl, "sensor": None},
    }
    out = read_sample(mods, window=(4, 8, 16, 16))
    assert out["s2"].shape_hw == (16, 16) and out["s1"].shape_hw == (8, 8)
    assert out["s1"].grid.bounds == out["s2"].grid.bounds == out["label"].grid.bounds
    np.testing.assert_allclose(out["s1"].pixels[0].numpy(), s1[:, 2:10, 4:12])
    np.testing.assert_array_equal(out["label"].pixels[0, 0].numpy(), lab[4:20, 8:24])
    assert out["label"].sensor == "raw" and out["label"].dates.tolist() == [0]
    same = read_sample(mods, window=(4, 8, 16, 16), native_resolution=False)
    assert same["s1"].shape_hw == (16, 16) and same["s1"].grid == same["s2"].grid
    odd = read_sample(mods, window=(4, 8, 15, 16))  # 15 rows: not a whole number of 20 m
    assert odd["s1"].shape_hw == (15, 16)


# ---------------------------------------------------------------------------- errors


def test_missing_corrupt_and_truncated_files(tmp_path, rng):
    missing = tmp_path / "nope.tif"
    with pytest.raises(RasterError, match="not found") as e:
        read_modality(missing, "sentinel2_l1c", [DAY])
    assert str(missing) in str(e.value)
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    with pytest.raises(RasterError, match="not a readable raster") as e:
        read_modality(text, "sentinel2_l1c", [DAY])
    assert str(text) in str(e.value)
    g = _grid(300, 300)  # tiled (256 px blocks), deflate: the header survives truncation
    path = write_geotiff(tmp_path / "cut.tif", _dn(rng, 13, 300, 300), g)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(RasterError, match="truncated or corrupt") as e:
        read_modality(path, "sentinel2_l1c", [DAY])
    assert str(path) in str(e.value)


def test_band_count_and_unknown_band_errors(tmp_path, rng):
    g = _grid()
    path = write_geotiff(tmp_path / "twelve.tif", _dn(rng, 12, 32, 40), g)
    with pytest.raises(RasterError, match="pass bands=") as e:
        read_modality(path, "sentinel2_l1c", [DAY])
    assert str(path) in str(e.value)
    with pytest.raises(RasterError, match="has 12") as e:
        read_modality(path, "sentinel2_l1c", [DAY], bands=S2)
    assert str(path) in str(e.value)
    with pytest.raises(RasterError, match="no band 'B13'") as e:
        read_modality(path, "sentinel2_l1c", [DAY], bands=[*S2[:11], "B13"])
    assert str(path) in str(e.value)
    with pytest.raises(RasterError, match="unknown sensor") as e:
        read_modality(path, "sentinel7", [DAY])
    assert str(path) in str(e.value)


def test_date_errors(tmp_path, rng):
    path, _, _ = _s2_file(tmp_path, rng)
    with pytest.raises(RasterError, match="pass dates=") as e:
        read_modality(path, "sentinel2_l1c")
    assert str(path) in str(e.value)
    with pytest.raises(RasterError, match="2 dates for 1 time steps") as e:
        read_modality(path, "sentinel2_l1c", [DAY, DAY])
    assert str(path) in str(e.value)
    with pytest.raises(RasterError, match="bad date") as e:
        read_modality(path, "sentinel2_l1c", ["14/07/2021"])
    assert str(path) in str(e.value)
    bad, _, _ = _s2_file(tmp_path, rng, "badtag.tif", tags={"ACQUISITION_DATE": "yesterday"})
    with pytest.raises(RasterError, match="not a date") as e:
        read_modality(bad, "sentinel2_l1c")
    assert str(bad) in str(e.value)


def test_dtype_checks(tmp_path, rng):
    g = _grid()
    ints = write_geotiff(tmp_path / "s1_dn.tif", _dn(rng, 2, 32, 40), g)
    with pytest.raises(RasterError, match="sentinel1_grd_linear") as e:
        read_modality(ints, "sentinel1_grd", [DAY])
    assert str(ints) in str(e.value)
    assert read_modality(ints, "sentinel1_grd", [DAY], dtype_check=False).pixels.shape[1] == 2
    refl = rng.uniform(0.01, 0.6, (13, 32, 40)).astype(np.float32)
    scaled = write_geotiff(tmp_path / "refl.tif", refl, g)
    with pytest.raises(RasterError, match="already in 0..1") as e:
        read_modality(scaled, "sentinel2_l1c", [DAY])
    assert str(scaled) in str(e.value)


# ---------------------------------------------------------------------------- tiles and blocks


def test_tiles_cover_every_pixel_and_cores_partition_the_raster():
    r = np.random.default_rng(7)
    for _ in range(120):
        h, w = (int(v) for v in r.integers(1, 90, 2))
        t = int(r.integers(1, 40))
        o = int(r.integers(0, t))
        covered = np.zeros((h, w), int)
        owned = np.zeros((h, w), int)
        for tl in tiles(h, w, t, o):
            assert (tl.height, tl.width) == (t, t)  # edge tiles keep the full size
            covered[max(tl.row, 0) : tl.row + t, max(tl.col, 0) : tl.col + t] += 1
            cr, cc, ch, cw = tl.core
            assert tl.row <= cr and cr + ch <= tl.row + t and tl.col <= cc and cc + cw <= tl.col + t
            assert ch > 0 and cw > 0 and cr + ch <= h and cc + cw <= w
            owned[cr : cr + ch, cc : cc + cw] += 1
            rs, cs = tl.core_slices
            assert (rs.stop - rs.start, cs.stop - cs.start) == (ch, cw)
        assert covered.min() >= 1, (h, w, t, o)
        assert (owned == 1).all(), (h, w, t, o)


def test_tiles_reject_bad_overlap():
    with pytest.raises(ValueError, match="overlap < tile"):
        tiles(10, 10, 4, 4)


def test_block_windows_align_to_blocks_and_cover(tmp_path, rng):
    g = _grid(600, 700)
    path = write_geotiff(tmp_path / "tiled.tif", _dn(rng, 1, 600, 700), g, blocksize=128)
    info = io.open_info(path)
    assert info["block_shape"] == (128, 128) and info["tiled"] and info["count"] == 1
    assert info["dtype"] == "uint16" and info["grid"] == g
    wins = io.block_windows(path, target=300)  # nearest multiple of 128: 256
    seen = np.zeros((600, 700), int)
    for r, c, h, w in wins:
        assert r % 128 == 0 and c % 128 == 0 and h <= 256 and w <= 256
        seen[r : r + h, c : c + w] += 1
    assert (seen == 1).all()


# ---------------------------------------------------------------------------- real data


def test_real_eurosat_ms_all_files(real_data):
    files = sorted(real_data("eurosat_ms").glob("*/*.tif"))
    assert len(files) > 0
    corr = []
    for f in files:
        d = read_modality(f, "sentinel2_l1c", [DAY], bands=EUROSAT_ORDER)
        assert d.bands == S2 and d.bands.index("B8A") == d.bands.index("B08") + 1
        assert d.pixels.shape == (1, 13, 64, 64) and bool(d.valid.all()), f
        px = d.pixels[0].flatten(1).numpy()
        med = np.median(px, axis=1)
        assert bool(((med > 0) & (med < 1)).all()), f
        assert int(np.argmin(med)) == S2.index("B10"), f  # cirrus is the darkest band
        c = np.corrcoef(px)
        corr.append((c[S2.index("B8A"), S2.index("B08")], c[S2.index("B8A"), S2.index("B12")]))
    # B8A (narrow NIR) tracks B08 (broad NIR), not B12 (SWIR): a band-order mix-up breaks this
    nir, swir = np.mean(corr, axis=0)
    assert nir > 0.8 and nir > swir + 0.3


def test_real_sen1floods11_sample_on_one_grid(real_data):
    root = real_data("sen1floods11")
    base = root / "Spain_7370579_"
    out = read_sample(
        {
            "s1": (f"{base}S1Hand.tif", "sentinel1_grd", DAY),
            "s2": {"paths": f"{base}S2Hand.tif", "sensor": "sentinel2_l1c", "dates": [DAY]},
            "label": {"paths": f"{base}LabelHand.tif", "sensor": None, "nodata": -1},
        }
    )
    grids = {k: v.grid for k, v in out.items()}
    assert len(set(grids.values())) == 1 and grids["s1"].crs == "EPSG:4326"
    s1, s2, lab = out["s1"], out["s2"], out["label"]
    assert s1.pixels.shape == (1, 2, 512, 512) and s2.pixels.shape == (1, 13, 512, 512)
    vv = s1.pixels[0, 0][s1.valid[0]]
    assert -25.0 < float(vv.median()) < 0.0
    assert s2.bands == S2
    refl = s2.pixels[0][:, s2.valid[0]].median(dim=1).values
    assert bool(((refl >= 0) & (refl < 1)).all())
    assert int((~lab.valid).sum()) == 99
    labels = lab.pixels[0, 0][lab.valid[0]]
    assert int((labels == 1).sum()) == 70035 and int((labels == 0).sum()) == 192010


def test_write_then_read_cog(tmp_path, rng):
    path, arr, g = _s2_file(tmp_path, rng, "cog.tif", cog=True, tags={"RSFM_DATE": DAY})
    d = read_modality(path, "sentinel2_l1c")
    np.testing.assert_allclose(d.pixels[0].numpy(), arr * np.float32(1e-4), rtol=1e-6)


def test_paths_may_be_str_or_pathlike(tmp_path, rng):
    path, _, _ = _s2_file(tmp_path, rng)
    a = read_modality(str(path), "sentinel2_l1c", [DAY])
    b = read_modality([Path(path)], "sentinel2_l1c", [DAY])
    assert np.array_equal(a.pixels.numpy(), b.pixels.numpy())
    assert os.fspath(path) in a.meta["paths"][0]
