"""Inputs that read without error but would give wrong results (issue 16, items 11-13):
a CRS without a geotransform, a zero pixel size, values implausible for the sensor,
and a band order assumed from the band count."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from rsfm_core import io
from rsfm_core.io import BandOrderWarning, ImplausibleValuesWarning, RasterError, read_modality
from rsfm_core.sample import Grid
from rsfm_core.sensors import get

rasterio = pytest.importorskip(
    "rasterio", reason="rasterio is not installed (pip install rasterio)"
)
Affine = pytest.importorskip("affine").Affine

DAY = "2021-07-14"
CRS = "EPSG:32633"


def _write(path, arr, transform=None, crs=CRS, descriptions=None):
    c, h, w = arr.shape
    kw = {} if transform is None else {"transform": transform}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio's NotGeoreferencedWarning
        with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c,
                           dtype=arr.dtype.name, crs=crs, **kw) as ds:  # fmt: skip
            ds.write(arr)
            for i, d in enumerate(descriptions or [], start=1):
                ds.set_band_description(i, d)
    return path


def _s2(rng, h=16, w=16, lo=200, hi=6000, dtype=np.uint16, c=13):
    return rng.integers(lo, hi, (c, h, w)).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(99)


def _grid(h=16, w=16) -> Grid:
    return Grid(CRS, (10.0, 0.0, 500000.0, 0.0, -10.0, 4e6), h, w)


# ------------------------------------------------------------- item 11: georeferencing


def test_a_crs_without_geotransform_is_refused_unless_opted_in(tmp_path, rng):
    path = _write(tmp_path / "nogt.tif", _s2(rng))  # CRS written, no transform
    with pytest.raises(RasterError, match=r"has a CRS \(EPSG:32633\) but no geotransform") as e:
        read_modality(path, "sentinel2_l1c", [DAY])
    msg = str(e.value)
    assert msg.startswith(str(path)) and "gdal_edit.py -a_ullr" in msg and "allow_no_crs" in msg
    d = read_modality(path, "sentinel2_l1c", [DAY], allow_no_crs=True)  # pixel coordinates
    assert d.grid.transform == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    ref = io.write_geotiff(tmp_path / "ref.tif", _s2(rng), _grid())
    with pytest.raises(RasterError, match="no geotransform"):  # next to a georeferenced file
        io.read_sample({"a": (ref, "sentinel2_l1c", DAY), "b": (path, "sentinel2_l1c", DAY)})


def test_a_zero_pixel_size_has_its_own_error(tmp_path, rng):
    _write(tmp_path / "data.tif", _s2(rng, c=1), transform=Affine(10, 0, 5e5, 0, -10, 4e6))
    vrt = tmp_path / "zero.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="16" rasterYSize="16"><SRS>EPSG:32633</SRS>'
        "<GeoTransform>500000, 0, 0, 4000000, 0, -10</GeoTransform>"
        '<VRTRasterBand dataType="UInt16" band="1"><SimpleSource><SourceFilename '
        'relativeToVRT="1">data.tif</SourceFilename><SourceBand>1</SourceBand></SimpleSource>'
        "</VRTRasterBand></VRTDataset>"
    )
    for read in (lambda: io.open_info(vrt), lambda: read_modality(vrt, None)):
        with pytest.raises(RasterError, match=r"zero pixel size.*gdal_edit\.py -a_gt") as e:
            read()
        assert str(e.value).startswith(str(vrt))


# ------------------------------------------------------------- item 12: plausibility


def test_uint8_data_for_sentinel2_warns_once_per_file(tmp_path, rng):
    path = io.write_geotiff(tmp_path / "s2_8bit.tif", _s2(rng, lo=10, hi=255, dtype=np.uint8),
                            _grid(), band_descriptions=get("sentinel2_l1c").band_names)  # fmt: skip
    with pytest.warns(ImplausibleValuesWarning) as rec:
        for window in ((0, 0, 8, 8), (8, 8, 8, 8), None):  # as a tiled run reads it
            read_modality(path, "sentinel2_l1c", [DAY], window=window)
    mine = [r for r in rec if issubclass(r.category, ImplausibleValuesWarning)]
    assert len(mine) == 1, [str(r.message) for r in mine]
    msg = str(mine[0].message)
    assert msg.startswith(str(path)) and "uint8" in msg and "sentinel2_l1c" in msg
    assert "10000" in msg and "too dark" in msg


@pytest.mark.parametrize(
    "sensor,arr,match",
    [
        ("naip", lambda r: r.integers(300, 60000, (4, 16, 16)).astype(np.uint16), "too bright"),
        ("sentinel1_grd", lambda r: r.uniform(0.001, 0.5, (2, 16, 16)).astype(np.float32),
         "linear power"),
        ("sentinel1_grd_linear", lambda r: r.uniform(-25, -5, (2, 16, 16)).astype(np.float32),
         "negative"),
    ],
    ids=["naip_uint16", "s1_linear_as_db", "s1_db_as_linear"],
)  # fmt: skip
def test_values_implausible_for_the_sensor_warn(tmp_path, rng, sensor, arr, match):
    path = io.write_geotiff(tmp_path / f"{sensor}.tif", arr(rng), _grid(),
                            band_descriptions=get(sensor).band_names)  # fmt: skip
    with pytest.warns(ImplausibleValuesWarning, match=match):
        read_modality(path, sensor, [DAY])


def test_plausible_data_reads_without_a_warning(tmp_path, rng):
    s2 = io.write_geotiff(tmp_path / "s2.tif", _s2(rng), _grid(),
                          band_descriptions=get("sentinel2_l1c").band_names)  # fmt: skip
    s1 = io.write_geotiff(tmp_path / "s1.tif", rng.uniform(-25, -2, (2, 16, 16)).astype(np.float32),
                          _grid(), band_descriptions=["VV", "VH"])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_modality(s2, "sentinel2_l1c", [DAY])
        read_modality(s1, "sentinel1_grd", [DAY])
        read_modality(s2, "sentinel2_l1c", [DAY], dtype_check=False)


# ------------------------------------------------------------- item 13: band order


def test_assumed_band_order_warns_once_naming_the_file_and_the_order(tmp_path, rng):
    path = io.write_geotiff(tmp_path / "eurosat_like.tif", _s2(rng), _grid())  # no descriptions
    with pytest.warns(BandOrderWarning) as rec:
        read_modality(path, "sentinel2_l1c", [DAY], window=(0, 0, 8, 8))
        read_modality(path, "sentinel2_l1c", [DAY])
    mine = [str(r.message) for r in rec if issubclass(r.category, BandOrderWarning)]
    assert len(mine) == 1
    assert mine[0].startswith(str(path)) and "B01, B02" in mine[0] and "B8A" in mine[0]
    assert "bands=" in mine[0]
    with warnings.catch_warnings():  # explicit band names, or descriptions: nothing assumed
        warnings.simplefilter("error", BandOrderWarning)
        read_modality(path, "sentinel2_l1c", [DAY], bands=list(get("sentinel2_l1c").band_names))
        named = io.write_geotiff(tmp_path / "named.tif", _s2(rng), _grid(),
                                 band_descriptions=get("sentinel2_l1c").band_names)  # fmt: skip
        read_modality(named, "sentinel2_l1c", [DAY])
    strict = tmp_path / "strict.tif"
    io.write_geotiff(strict, _s2(rng), _grid())
    with warnings.catch_warnings(), pytest.raises(BandOrderWarning):  # a strict user's choice
        warnings.simplefilter("error", BandOrderWarning)
        read_modality(strict, "sentinel2_l1c", [DAY])
