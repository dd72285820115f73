"""Synthetic scenes: physics (spectra, phenology, backscatter, cross-sensor agreement),
determinism, clouds/gaps, files and the ``rsfm synth`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rsfm_core import io as rio_
from rsfm_core import sensors
from rsfm_core import synthetic as sy
from rsfm_core.sample import to_days
from rsfm_core.synthetic import landcover

SPRING, SUMMER = "2021-03-20", "2021-06-20"


@pytest.fixture(scope="module")
def scene() -> sy.Scene:
    return sy.make_scene(
        64, dates=[SPRING, SUMMER], sensors=("sentinel2_l2a", "sentinel1_grd"), seed=3
    )


@pytest.fixture(scope="module")
def multi() -> sy.Scene:
    """One summer date seen by Sentinel-2, Landsat 8 and EnMAP, no clouds."""
    return sy.make_scene(
        64,
        dates=[SUMMER],
        sensors=("sentinel2_l2a", "landsat8_oli", "enmap"),
        seed=5,
        cloud_fraction=0.0,
    )


def _band(scene: sy.Scene, sensor: str, band: str) -> np.ndarray:
    md = scene[sensor]
    return md.pixels[:, md.bands.index(band)].numpy()  # (T, H, W)


def _ndvi(scene: sy.Scene) -> np.ndarray:
    red, nir = _band(scene, "sentinel2_l2a", "B04"), _band(scene, "sentinel2_l2a", "B08")
    with np.errstate(invalid="ignore", divide="ignore"):
        return (nir - red) / (nir + red)


def _class_median(scene, values_t, name, t=0, sensor="sentinel2_l2a") -> float:
    m = (scene.labels == scene.class_id(name)) & scene[sensor].valid[t].numpy()
    assert m.sum() > 20, f"too few valid {name} pixels for a median"
    return float(np.median(values_t[m]))


# ---------------------------------------------------------------------------- spectra


def _at(spec: np.ndarray, nm: float) -> float:
    return float(np.interp(nm, landcover.WAVELENGTHS_NM, spec))


def test_endmember_spectra_have_their_absorption_features():
    veg = landcover.spectrum("green_vegetation")
    assert _at(veg, 555) > _at(veg, 480) and _at(veg, 555) > _at(veg, 670)  # green peak
    assert _at(veg, 670) < 0.05 and _at(veg, 760) - _at(veg, 690) > 0.25  # red edge
    assert 0.35 < _at(veg, 860) < 0.5  # NIR plateau
    assert _at(veg, 1450) < 0.6 * _at(veg, 1650) and _at(veg, 1940) < 0.3 * _at(veg, 1650)
    water = landcover.spectrum("water")
    assert all(0.02 <= _at(water, nm) <= 0.08 for nm in (450, 500, 550))
    assert all(_at(water, nm) < 0.02 for nm in (800, 865, 1610, 2200))
    soil = landcover.spectrum("soil")
    assert _at(soil, 450) < _at(soil, 650) < _at(soil, 850) < _at(soil, 1650)
    assert _at(soil, 2200) < min(_at(soil, 2120), _at(soil, 2280))  # clay Al-OH
    urban = landcover.spectrum("impervious")
    lam = landcover.WAVELENGTHS_NM
    assert np.all(urban[(lam >= 400) & (lam <= 2500)] > 0.07)
    assert np.all(urban[(lam >= 400) & (lam <= 2500)] < 0.25)
    snow, cloud = landcover.spectrum("snow"), landcover.spectrum("cloud")
    assert _at(snow, 560) > 0.9 and _at(snow, 1610) < 0.1 < _at(cloud, 1610)  # NDSI works


def test_band_spectra_validate_wavelength_range():
    with pytest.raises(ValueError, match="SAR"):
        landcover.spectral_response("sentinel1_grd")
    tir = sensors.hyperspectral([10900.0], 500.0, name="tir")
    with pytest.raises(ValueError, match="outside the synthetic spectra"):
        landcover.spectral_response(tir)


# ---------------------------------------------------------------------------- physics


def test_summer_vegetation_ndvi_and_dark_water(scene):
    ndvi = _ndvi(scene)[1]
    for name in ("broadleaf_forest", "cropland", "grassland"):
        assert _class_median(scene, ndvi, name, t=1) > 0.5, name
    for name in ("bare_soil", "urban"):
        assert 0.0 < _class_median(scene, ndvi, name, t=1) < 0.3, name
    nir = _band(scene, "sentinel2_l2a", "B08")[1]
    assert _class_median(scene, nir, "water", t=1) < 0.05
    assert _class_median(scene, ndvi, "water", t=1) < 0.0


def test_phenology_cropland_greens_up_forest_less(scene):
    ndvi = _ndvi(scene)
    crop = [_class_median(scene, ndvi[t], "cropland", t) for t in (0, 1)]
    forest = [_class_median(scene, ndvi[t], "broadleaf_forest", t) for t in (0, 1)]
    assert crop[0] < 0.3 < 0.6 < crop[1], crop
    assert forest[1] - forest[0] < crop[1] - crop[0], (forest, crop)
    water = [_class_median(scene, ndvi[t], "water", t) for t in (0, 1)]
    assert abs(water[1] - water[0]) < 0.1


def test_sar_backscatter_per_class(scene):
    vv, vh = (_band(scene, "sentinel1_grd", p)[1] for p in ("VV", "VH"))
    med = {n: _class_median(scene, vv, n, 1, "sentinel1_grd") for n in scene.class_names}  # dB
    assert -26 < med["water"] < -19
    assert -10 < med["broadleaf_forest"] < -6
    assert -3 < med["urban"] < 4
    assert -14 < med["bare_soil"] < -10
    assert min(med, key=med.get) == "water" and max(med, key=med.get) == "urban"
    for n in scene.class_names:
        assert _class_median(scene, vh, n, 1, "sentinel1_grd") < med[n] - 3, n  # VH < VV
    assert scene["sentinel1_grd"].valid.all()  # clouds don't affect SAR
    # speckle: L=4 looks -> std of 10*log10(gamma) ~ 2.3 dB within a class
    w = vv[scene.labels == scene.class_id("water")]
    assert 1.5 < w.std() < 3.5


def test_sar_crop_backscatter_rises_with_biomass(scene):
    vh = _band(scene, "sentinel1_grd", "VH")
    spring, summer = (_class_median(scene, vh[t], "cropland", t, "sentinel1_grd") for t in (0, 1))
    assert summer - spring > 1.5


@pytest.mark.parametrize(
    "other, pairs",
    [
        ("landsat8_oli", {"B02": "B2", "B03": "B3", "B04": "B4", "B8A": "B5", "B11": "B6"}),
        ("enmap", None),  # every S2 band vs the nearest EnMAP band
    ],
)
def test_same_surface_agrees_across_sensors(multi, other, pairs):
    s2 = sensors.get("sentinel2_l2a")
    if pairs is None:
        centers = np.array([b.center_nm for b in sensors.get(other).bands])
        pairs = {
            b.name: sensors.get(other).bands[int(np.argmin(abs(centers - b.center_nm)))].name
            for b in s2.bands
        }
    for name in multi.class_names:
        for a, b in pairs.items():
            x = _class_median(multi, _band(multi, "sentinel2_l2a", a)[0], name)
            y = _class_median(multi, _band(multi, other, b)[0], name, sensor=other)
            assert abs(x - y) <= 0.01 + 0.05 * x, (name, a, b, x, y)
    assert float(multi["sentinel2_l2a"].pixels.mean()) > 0.05


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_scene_other_seed_differs():
    kw = dict(size=48, sensors=("sentinel2_l2a", "sentinel1_grd"), num_dates=2)
    a, b, c = sy.make_scene(seed=7, **kw), sy.make_scene(seed=7, **kw), sy.make_scene(seed=8, **kw)
    assert np.array_equal(a.labels, b.labels)
    for s in a.modalities:
        assert torch.equal(a[s].pixels, b[s].pixels) and torch.equal(a[s].valid, b[s].valid)
        assert not torch.equal(a[s].pixels, c[s].pixels)
    assert not np.array_equal(a.labels, c.labels)


def test_class_map_and_clouds_do_not_depend_on_sensor_list():
    a = sy.make_scene(48, sensors=("sentinel2_l2a",), num_dates=2, seed=2)
    b = sy.make_scene(48, sensors=("sentinel1_grd", "sentinel2_l2a"), num_dates=2, seed=2)
    assert np.array_equal(a.labels, b.labels)
    assert torch.equal(a["sentinel2_l2a"].valid, b["sentinel2_l2a"].valid)


@pytest.mark.parametrize("k", [2, 6, 9])
def test_every_class_present_in_coherent_regions(k):
    sc = sy.make_scene(64, num_classes=k, sensors=("sentinel1_grd",), num_dates=1, seed=1)
    counts = np.bincount(sc.labels.ravel(), minlength=k)
    assert len(counts) == k and (counts > 0).all(), counts
    # spatial coherence: most 4-neighbours share the class (random labels: ~1/k)
    same = np.mean(sc.labels[1:] == sc.labels[:-1])
    assert same > 0.9


# ---------------------------------------------------------------------------- clouds, gaps


def test_clouds_invalid_at_about_cloud_fraction():
    sc = sy.make_scene(64, num_dates=6, sensors=("sentinel2_l2a",), cloud_fraction=0.2, seed=4)
    md = sc["sentinel2_l2a"]
    invalid = 1.0 - md.valid.float().mean(dim=(1, 2))
    assert 0.12 < float(invalid.mean()) < 0.28, invalid
    assert (invalid > 0.05).all()
    assert (md.pixels.permute(1, 0, 2, 3)[:, ~md.valid] == 0).all()  # contract: 0.0 there
    bright = sy.make_scene(
        64,
        num_dates=6,
        sensors=("sentinel2_l2a",),
        cloud_fraction=0.2,
        seed=4,
        keep_cloud_values=True,
    )["sentinel2_l2a"]
    assert torch.equal(bright.valid, md.valid)
    blue = bright.pixels[:, bright.bands.index("B02")]
    assert float(blue[~bright.valid].median()) > 0.5  # clouds are bright


def test_no_clouds_and_stripes():
    clear = sy.make_scene(32, num_dates=2, sensors=("sentinel2_l2a",), cloud_fraction=0.0)
    assert clear["sentinel2_l2a"].valid.all()
    striped = sy.make_scene(
        64, num_dates=2, sensors=("landsat8_oli",), cloud_fraction=0.0, stripe_fraction=0.2
    )
    frac = 1.0 - striped["landsat8_oli"].valid.float().mean(dim=(1, 2))
    assert torch.allclose(frac, torch.full_like(frac, 0.2), atol=0.05), frac


def test_native_resolution_grids():
    sc = sy.make_scene(
        48,
        num_dates=1,
        sensors=("sentinel2_l2a", "landsat8_oli"),
        cloud_fraction=0.0,
        native_resolution=True,
    )
    s2, l8 = sc["sentinel2_l2a"], sc["landsat8_oli"]
    assert s2.shape_hw == (48, 48) and l8.shape_hw == (16, 16)
    assert l8.grid.res == (30.0, 30.0) and l8.grid.bounds == s2.grid.bounds
    # area averaging: a 30 m pixel is about the mean of its 3x3 10 m pixels
    red = s2.pixels[0, s2.bands.index("B04")].reshape(16, 3, 16, 3).mean(dim=(1, 3))
    assert float((red - l8.pixels[0, l8.bands.index("B4")]).abs().median()) < 0.01
    with pytest.raises(ValueError, match="divisible by 3"):
        sy.make_scene(32, sensors=("landsat8_oli",), native_resolution=True)


def test_config_validation():
    with pytest.raises(ValueError, match="num_classes"):
        sy.make_scene(32, num_classes=10)
    with pytest.raises(sensors.SensorError, match="unknown sensor"):
        sy.make_scene(32, sensors=("sentinel9",))
    with pytest.raises(TypeError):
        sy.make_scene(32, not_an_option=1)
    with pytest.raises(ValueError, match="no dates given"):
        sy.make_scene(32, dates={"sentinel2_l2a": [SUMMER]})


# ---------------------------------------------------------------------------- files


def test_write_scene_geotiffs(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    sc = sy.make_scene(
        32,
        dates=[SPRING, SUMMER],
        sensors=("sentinel2_l2a", "sentinel1_grd"),
        cloud_fraction=0.2,
        seed=6,
    )
    m = sy.write_scene(sc, tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["sensors"]["sentinel2_l2a"]["files"][0] == f"sentinel2_l2a/{SPRING}.tif"
    assert m["sensors"]["sentinel2_l2a"]["dates"] == [SPRING, SUMMER]
    assert m["classes"] == list(sc.class_names) and m["seed"] == 6
    for name, dtype in (("sentinel2_l2a", "uint16"), ("sentinel1_grd", "float32")):
        s, e, md = sensors.get(name), m["sensors"][name], sc[name]
        for t, path in enumerate(e["files"]):
            with rasterio.open(path) as ds:
                assert ds.crs.to_epsg() == 32632
                assert tuple(ds.transform)[:6] == sc.grid.transform
                assert ds.dtypes[0] == dtype and ds.descriptions == md.bands
                assert ds.tags()["RSFM_DATE"] == e["dates"][t]
                assert ds.tags()["RSFM_SENSOR"] == name
                raw = ds.read()
                nodata = ds.nodata
            valid = md.valid[t].numpy()
            if name == "sentinel2_l2a":
                assert nodata == 0 and (raw[:, ~valid] == 0).all() and (raw[:, valid] > 0).all()
            else:
                assert math.isnan(nodata) and e["nodata"] != e["nodata"]  # NaN
            phys = s.to_physical(raw)
            assert np.allclose(phys[:, valid], md.pixels[t].numpy()[:, valid], atol=1e-4)
    with rasterio.open(m["labels"]) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        assert np.array_equal(ds.read(1), sc.labels)
        assert json.loads(ds.tags()["RSFM_CLASSES"]) == list(sc.class_names)


def test_write_scene_cog(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    sc = sy.make_scene(32, num_dates=1, sensors=("sentinel2_l2a",))
    m = sy.write_scene(sc, tmp_path, cog=True)
    with rasterio.open(m["sensors"]["sentinel2_l2a"]["files"][0]) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_encode_never_writes_nodata_on_valid_pixels():
    pix = np.array([[[0.0, 0.5], [0.0, 0.2]]], dtype=np.float32)  # reflectance 0 -> raw 0
    valid = np.array([[True, True], [False, True]])
    raw = sy.encode(pix, valid, "sentinel2_l2a")
    assert raw.dtype == np.uint16 and raw[0, 1, 0] == 0
    assert raw[0, 0, 0] == 1 and raw[0, 0, 1] == 5000


@pytest.mark.parametrize("name", sensors.names())
def test_every_registered_sensor_renders_and_encodes(name):
    sc = sy.make_scene(16, num_dates=1, sensors=(name,), cloud_fraction=0.3, seed=2)
    md, s = sc[name], sensors.get(name)
    raw = sy.encode(md.pixels[0].numpy(), md.valid[0].numpy(), name)
    dtype, nodata = sy.file_encoding(name)
    assert raw.dtype == dtype
    assert bool(md.valid.all()) == s.is_sar  # clouds on optical sensors only
    back = s.to_physical(raw)[:, md.valid[0].numpy()]
    ref = md.pixels[0].numpy()[:, md.valid[0].numpy()]
    assert np.allclose(back, ref, atol=1.01 * s.scale if not s.is_sar else 1e-4)
    if not math.isnan(nodata):
        assert not (raw[:, md.valid[0].numpy()] == nodata).any()


def test_round_trip_through_read_modality(tmp_path):
    read_modality = getattr(rio_, "read_modality", None)
    if read_modality is None:
        pytest.skip("rsfm_core.io.read_modality is not available yet")
    sc = sy.make_scene(
        32,
        dates=[SPRING, SUMMER],
        sensors=("sentinel2_l2a", "sentinel1_grd", "enmap"),
        cloud_fraction=0.2,
    )
    m = sy.write_scene(sc, tmp_path)
    for name, e in m["sensors"].items():
        for dates in (e["dates"], None):  # None: read from the RSFM_DATE tags
            md = read_modality(e["files"], name, dates)
            ref = sc[name]
            assert md.bands == ref.bands and torch.equal(md.valid, ref.valid)
            assert md.dates.tolist() == [to_days(d) for d in e["dates"]]
            assert torch.allclose(md.pixels, ref.pixels, atol=1e-4), name


def test_cli_synth(tmp_path, capsys):
    from rsfm_core.cli import main

    out = tmp_path / "scene"
    rc = main(
        [
            "synth",
            "--out",
            str(out),
            "--size",
            "32",
            "--dates",
            "2",
            "--classes",
            "4",
            "--sensors",
            "sentinel2_l2a,sentinel1_grd",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["sensors"]["sentinel1_grd"]["files"]) == 2 and len(m["classes"]) == 4
    assert all((out / f).is_file() for e in m["sensors"].values() for f in e["files"])
    printed = capsys.readouterr().out
    assert "EPSG:32632" in printed and "sentinel2_l2a" in printed and "valid" in printed
    assert main(["synth", "--out", str(out), "--sensors", "sentinel9"]) == 2
    assert "unknown sensor" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    assert "example:" in capsys.readouterr().out
