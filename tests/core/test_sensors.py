"""Sensor registry: agency values, band lookups, validation at the boundary."""

from __future__ import annotations

import numpy as np
import pytest

from rsfm_core import sensors as S
from rsfm_core.sensors import Band, Sensor, SensorError


def test_registry_has_the_designed_entries():
    want = {
        "sentinel2_l1c": 13,
        "sentinel2_l2a": 12,
        "sentinel1_grd": 2,
        "sentinel1_grd_hh": 2,
        "landsat8_oli": 7,
        "landsat9_oli": 7,
        "hls": 6,
        "naip": 4,
        "rgb_highres": 3,
        "enmap": 224,
        "aviris": 224,
    }
    for name, n in want.items():
        assert len(S.get(name).bands) == n, name


def test_sentinel2_values_and_order():
    l1c = S.get("sentinel2_l1c")
    assert l1c.band_names == (
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
    )  # fmt: skip
    red = l1c.band("B04")
    assert red.center_nm == pytest.approx(664.6) and red.fwhm_nm == pytest.approx(31)
    assert red.gsd_m == 10 and l1c.band("B05").gsd_m == 20 and l1c.band("B01").gsd_m == 60
    assert "B10" not in S.get("sentinel2_l2a").band_names
    # post-2022 baseline: reflectance = (DN - 1000) / 10000
    pb04 = S.get("sentinel2_l2a_pb04")
    assert pb04.to_physical(np.array([1000, 3000], np.uint16)) == pytest.approx(
        [0.0, 0.2], abs=1e-6
    )
    centres = [b.center_nm for b in l1c.bands]
    assert all(400 < c < 2500 for c in centres)


def test_sar_bands_have_no_wavelength():
    s1 = S.get("sentinel1_grd")
    for b in s1.bands:
        assert b.center_nm is None and b.fwhm_nm is None
        assert b.polarization in ("VV", "VH") and b.frequency_ghz == pytest.approx(5.405)
    assert S.get("sentinel1_grd_hh").band_names == ("HH", "HV")


def test_sar_linear_converts_to_db():
    lin = S.get("sentinel1_grd_linear")
    x = np.array([[1.0, 0.1, 0.01]], np.float32)
    assert lin.to_physical(x) == pytest.approx(np.array([[0.0, -10.0, -20.0]]), abs=1e-5)
    assert lin.from_physical(lin.to_physical(x)) == pytest.approx(x, rel=1e-5)


def test_landsat_scale_offset_and_round_trip():
    ls = S.get("landsat8_oli")
    assert ls.to_physical(np.array([7273], np.uint16))[0] == pytest.approx(
        7273 * 2.75e-5 - 0.2, abs=1e-6
    )
    refl = np.array([0.05, 0.3], np.float32)
    dn = ls.from_physical(refl, np.uint16)
    assert ls.to_physical(dn) == pytest.approx(refl, abs=3e-5)


def test_hyperspectral_sensors():
    en = S.get("enmap")
    c = np.array([b.center_nm for b in en.bands])
    assert c.min() == pytest.approx(418.42) and c.max() == pytest.approx(2445.53)
    assert len(set(en.band_names)) == 224
    av = S.get("aviris")
    assert av.bands[0].center_nm == pytest.approx(400.0)
    assert av.bands[223].center_nm == pytest.approx(400 + 9.46 * 223)
    g = S.hyperspectral([450.0, 550.0, 650.0, 900.0], name="mine")
    assert [b.fwhm_nm for b in g.bands] == [100.0, 100.0, 100.0, 250.0]
    assert g.kind == "hyperspectral"


def test_stats_follow_wavelength():
    # vegetation-dominated land: NIR mean above red mean; water-vapour bands dark.
    m_red, _ = S.reflectance_stats(665)
    m_nir, _ = S.reflectance_stats(842)
    m_wv, _ = S.reflectance_stats(1400)
    assert m_nir > m_red > m_wv
    l2a, ls = S.get("sentinel2_l2a"), S.get("landsat8_oli")
    # the same wavelength gets the same statistics in two sensors
    assert l2a.band("B8A").mean == pytest.approx(ls.band("B5").mean)


def test_resolve_and_subset_keep_sensor_order():
    s2 = S.get("sentinel2_l2a")
    assert s2.resolve("b8") == "B08" and s2.resolve("nir08") == "B8A" and s2.resolve("red") == "B04"
    assert s2.indices(["B8A", "B04"]) == [8, 3]
    sub = s2.subset(["B8A", "red", "B02"])
    assert sub.band_names == ("B02", "B04", "B8A")  # sensor order, not the caller's
    assert sub.name == s2.name


def test_errors_are_clear():
    s2 = S.get("sentinel2_l2a")
    with pytest.raises(SensorError, match="no band 'B13'.*B01"):
        s2.resolve("B13")
    with pytest.raises(SensorError, match="more than once"):
        s2.indices(["B04", "red"])
    with pytest.raises(SensorError, match="micrometres.*665"):
        Band("red", center_nm=0.665, fwhm_nm=0.03)
    with pytest.raises(SensorError, match="SAR band.*no wavelength"):
        Band("VV", center_nm=55_000_000.0, polarization="VV", frequency_ghz=5.405)
    with pytest.raises(SensorError, match="polarization"):
        Band("XX", polarization="XY", frequency_ghz=5.4)
    with pytest.raises(SensorError, match="duplicated band names"):
        Sensor("dup", (Band("a", center_nm=500.0), Band("a", center_nm=600.0)), "optical")
    with pytest.raises(SensorError, match="mixes SAR and optical"):
        Sensor(
            "mix",
            (Band("a", center_nm=500.0), Band("VV", polarization="VV", frequency_ghz=5.4)),
            "optical",
        )
    with pytest.raises(SensorError, match="unknown sensor 'sentinel3'.*sentinel2_l2a"):
        S.get("sentinel3")


def test_dict_round_trip():
    for name in ("sentinel2_l2a", "sentinel1_grd_linear", "enmap"):
        s = S.get(name)
        assert Sensor.from_dict(s.to_dict()) == s
