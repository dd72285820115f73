"""rsfm_tiny forward on real samples from ../shared/data (skipped where a set is absent).

Files are read with rasterio / numpy / scipy directly, so these tests depend on nothing
but the data's documented layout (see ../shared/data/README.md).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsfm_core import sensors
from rsfm_core.model import EncoderOutput, build_model
from rsfm_core.sample import ModalityData, to_days


def _tiny(**overrides):
    torch.manual_seed(0)
    return build_model("rsfm_tiny", **overrides).eval()


def _check_finite(out: EncoderOutput) -> None:
    assert out.valid.any()
    for t in (out.dense, out.pooled, *out.modalities.values()):
        assert torch.isfinite(t).all()


def _md(
    pixels: np.ndarray, valid: np.ndarray, days: np.ndarray, sensor: str, bands
) -> ModalityData:
    """pixels (B, T, C, H, W) physical, invalid -> 0; valid (B, T, H, W); days (B, T)."""
    x = torch.from_numpy(np.where(valid[:, :, None], pixels, 0).astype(np.float32))
    return ModalityData(x, torch.from_numpy(valid), torch.from_numpy(days), sensor, tuple(bands))


# EuroSAT-MS stores B8A LAST (after B12), unlike the sensor order.
EUROSAT_FILE_BANDS = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B09",
    "B10",
    "B11",
    "B12",
    "B8A",
)


def test_eurosat_ms(real_data):
    rasterio = pytest.importorskip("rasterio")
    root = real_data("eurosat_ms")
    files = [sorted((root / c).glob("*.tif"))[0] for c in ("Forest", "River", "Industrial")]
    raw = []
    for f in files:
        with rasterio.open(f) as ds:
            assert ds.count == 13, f"{f}: expected 13 bands"
            raw.append(ds.read())  # (13, 64, 64) uint16
    raw = np.stack(raw)[:, None]  # (B, T=1, C, H, W)
    valid = (raw != 0).all(axis=2)  # (B, T, H, W); 0 is nodata
    days = np.full((len(files), 1), to_days("2017-06-15"), dtype=np.int64)
    s2 = _md(raw * 1e-4, valid, days, "sentinel2_l1c", EUROSAT_FILE_BANDS)
    model = _tiny()
    out = model({"s2": s2})
    _check_finite(out)
    assert out.dense.shape == (3, 128, 16, 16)
    # Reordered into the sensor's order (B8A after B08), the output is the same.
    order = sensors.get("sentinel2_l1c").indices(EUROSAT_FILE_BANDS)
    perm = np.argsort(order)
    s2_sorted = replace(
        s2, pixels=s2.pixels[:, :, perm], bands=tuple(EUROSAT_FILE_BANDS[i] for i in perm)
    )
    assert s2_sorted.bands[8] == "B8A"
    torch.testing.assert_close(model({"s2": s2_sorted}).dense, out.dense, rtol=1e-4, atol=1e-5)


def test_sen1floods11_s1_s2(real_data):
    rasterio = pytest.importorskip("rasterio")
    root = real_data("sen1floods11")
    win = rasterio.windows.Window(200, 100, 64, 64)
    with rasterio.open(root / "Spain_7370579_S2Hand.tif") as ds:
        s2_raw, s2_bands = (
            ds.read(window=win).astype(np.float32),
            ds.descriptions,
        )  # B1..B12, B8A after B8
    with rasterio.open(root / "Spain_7370579_S1Hand.tif") as ds:
        s1_raw, s1_bands = ds.read(window=win), ds.descriptions  # VV, VH in dB, NaN = nodata
    days = np.full((1, 1), to_days("2019-09-18"), dtype=np.int64)
    s2_valid = (s2_raw != 0).all(axis=0)[None, None]  # (1, 1, H, W)
    s1_valid = np.isfinite(s1_raw).all(axis=0)[None, None]
    batch = {
        "s2": _md(s2_raw[None, None] * 1e-4, s2_valid, days, "sentinel2_l1c", s2_bands),
        "s1": _md(np.nan_to_num(s1_raw)[None, None], s1_valid, days, "sentinel1_grd", s1_bands),
    }
    out = _tiny()(batch)
    _check_finite(out)
    assert set(out.modalities) == {"s2", "s1"}


def test_reben_s1_s2_pairs(real_data):
    z = np.load(real_data("reben_s1s2") / "reben_s1s2.npz")
    B, crop = 2, 64
    up = lambda a: F.interpolate(
        torch.from_numpy(a[:B].astype(np.float32)),
        size=(120, 120),
        mode="bilinear",
        align_corners=False,
    )  # noqa: E731
    s2 = torch.cat([up(z["s2_10m"]), up(z["s2_20m"]), up(z["s2_60m"])], dim=1)  # (B, 12, 120, 120)
    bands = [*z["s2_10m_bands"], *z["s2_20m_bands"], *z["s2_60m_bands"]]
    s2 = s2[None].transpose(0, 1)[..., :crop, :crop].numpy()  # (B, T=1, 12, 64, 64)
    s1 = z["s1"][:B, None, :, :crop, :crop]  # (B, 1, 2, 64, 64) dB
    days = np.full((B, 1), to_days("2018-07-01"), dtype=np.int64)
    batch = {
        "s2": _md(s2 * 1e-4, (s2 != 0).all(axis=2), days, "sentinel2_l2a", bands),
        "s1": _md(
            np.nan_to_num(s1), np.isfinite(s1).all(axis=2), days, "sentinel1_grd", z["s1_bands"]
        ),
    }
    out = _tiny()(batch)
    _check_finite(out)
    assert out.dense.shape == (B, 128, 16, 16)


# Salinas-A keeps 204 of AVIRIS's 224 bands: 108-112, 154-167 and 224 (1-based) were removed.
AVIRIS_REMOVED = {*range(108, 113), *range(154, 168), 224}


def test_salinas_a_aviris_grouped(real_data):
    scipy_io = pytest.importorskip("scipy.io")
    cube = scipy_io.loadmat(real_data("salinas_a") / "SalinasA_corrected.mat")["salinasA_corrected"]
    aviris = sensors.get("aviris")
    bands = [b.name for k, b in enumerate(aviris.bands, start=1) if k not in AVIRIS_REMOVED]
    assert cube.shape[-1] == len(bands) == 204
    x = cube[:64, :64].transpose(2, 0, 1)[None, None].astype(np.float32)  # (1, 1, 204, 64, 64)
    days = np.full((1, 1), to_days("1998-10-09"), dtype=np.int64)
    hs = _md(x * 1e-4, np.ones((1, 1, 64, 64), dtype=bool), days, "aviris", bands)
    model = _tiny()
    bset = model.band_set("hs", hs)
    assert bset.num_groups == 4 and bool(bset.group_present.all())  # 400-2500 nm spans every group
    out = model({"hs": hs})
    _check_finite(out)
    assert bool(out.valid.all())


PRESTO_S2 = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")


def _month_days(months: np.ndarray, first_year: int = 2020) -> np.ndarray:
    """Monthly index (0 = January) sequences -> days of the 15th, the year advancing at
    each wrap (e.g. Jul 2020 ... Jun 2021)."""
    years = first_year + np.concatenate(
        [np.zeros((months.shape[0], 1), dtype=int), np.cumsum(np.diff(months, axis=1) < 0, axis=1)],
        axis=1,
    )
    return np.vectorize(lambda y, m: to_days(f"{y:04d}-{m + 1:02d}-15"))(years, months).astype(
        np.int64
    )


def test_presto_monthly_s1_s2_points(real_data):
    root = real_data("presto_algae")
    B = 6
    x = np.load(root / "s1_s2_era5_srtm.npy")[:B]  # (B, 12, 18)
    days = _month_days(np.load(root / "month.npy")[:B])  # (B, 12)
    # Each point is a 1 x 1 image with patch 1: one token, a 12-month series per sensor.
    mods = {
        "s2": {"sensor": "sentinel2_l2a", "patch": 1},
        "s1": {"sensor": "sentinel1_grd", "patch": 1},
    }
    model = _tiny(modalities=mods)
    s1 = x[:, :, 0:2, None, None]  # (B, 12, 2, 1, 1) VV, VH dB
    s2 = (
        x[:, :, 2:13, None, None] * 1e-4
    )  # (B, 12, 11, 1, 1); Presto exports COPERNICUS/S2 (L1C) without B1/B10
    ok = lambda a: np.isfinite(a).all(axis=2)  # noqa: E731
    batch = {
        "s2": _md(np.nan_to_num(s2), ok(s2), days, "sentinel2_l1c", PRESTO_S2),
        "s1": _md(np.nan_to_num(s1), ok(s1), days, "sentinel1_grd", ("VV", "VH")),
    }
    out = model(batch)
    _check_finite(out)
    assert out.dense.shape == (B, 128, 1, 1) and out.pooled.shape == (B, 128)
