"""ModalityData.from_numpy: in-memory arrays (a hyperspectral cube, a numpy time series)
with sensor, bands, dates and an optional georeference; custom sensors and bands."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rsfm_core as rs


def test_time_series_in_sensor_order_with_grid():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.5, (2, 3, 8, 8)).astype(np.float32)  # channels B08, B04, B03
    x[1, 0, 2, 3] = np.nan
    d = rs.ModalityData.from_numpy(
        x, "sentinel2_l2a", ["2024-05-01", "2024-06-01"], bands=["B8", "red", "B03"],
        transform=(10.0, 0.0, 600000.0, 0.0, -10.0, 5100000.0), crs="EPSG:32632",
    )  # fmt: skip
    assert d.bands == ("B03", "B04", "B08")  # the sensor's order, names resolved
    torch.testing.assert_close(d.pixels[:, 2], torch.from_numpy(np.nan_to_num(x[:, 0])))
    b03 = x[:, 2].copy()
    b03[1, 2, 3] = 0.0  # a pixel invalid in one band is invalid (0) in all
    torch.testing.assert_close(d.pixels[:, 0], torch.from_numpy(b03))
    assert not d.valid[1, 2, 3] and d.valid.sum() == 2 * 64 - 1 and d.pixels[1, :, 2, 3].eq(0).all()
    assert d.dates.tolist() == [rs.sample.to_days("2024-05-01"), rs.sample.to_days("2024-06-01")]
    assert d.grid.crs == "EPSG:32632" and d.grid.res == (10.0, 10.0) and d.grid.height == 8


def test_raw_values_use_the_sensor_scale_and_feed_the_model():
    raw = np.full((12, 16, 16), 1000, dtype=np.uint16)  # one date, all 12 bands, L2A DN
    d = rs.ModalityData.from_numpy(raw, "sentinel2_l2a", ["2024-05-01"], raw=True)
    assert d.pixels.shape == (1, 12, 16, 16) and d.grid is None
    torch.testing.assert_close(d.pixels, torch.full_like(d.pixels, 0.1))
    out = rs.build_model("rsfm_tiny")({"s2": d.unsqueeze()})
    assert torch.isfinite(out.dense).all()


def test_custom_sensor_for_a_hyperspectral_cube_is_registered():
    cube = np.random.default_rng(1).uniform(0, 0.4, (1, 5, 8, 8))
    sensor = rs.sensors.hyperspectral([450, 550, 650, 750, 850], name="test_cube_5b", gsd_m=30)
    d = rs.ModalityData.from_numpy(cube, sensor, ["2020-07-01"])
    assert d.sensor == "test_cube_5b" and rs.sensors.get("test_cube_5b") == sensor
    other = rs.sensors.hyperspectral([500, 600], name="test_cube_5b")
    with pytest.raises(ValueError, match="another sensor is registered as 'test_cube_5b'"):
        rs.ModalityData.from_numpy(cube[:, :2], other, ["2020-07-01"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bands": ["B02", "B03"]}, "3 channels but 2 band names"),
        ({"dates": ["2024-05-01", "2024-06-01"]}, "1 time steps but 2 dates"),
        ({"bands": ["B02", "B03", "NDVI"]}, "has no band 'NDVI'"),
        ({"valid": np.ones((4, 4), bool)}, "valid must be"),
    ],
)
def test_errors_say_what_to_fix(kwargs, match):
    args = {"bands": ["B02", "B03", "B04"], "dates": ["2024-05-01"], **kwargs}
    with pytest.raises(ValueError, match=match):
        rs.ModalityData.from_numpy(np.zeros((3, 8, 8)), "sentinel2_l2a", **args)
