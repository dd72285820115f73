"""Output shapes for every kind of input, and clear errors for inputs that cannot work."""

from __future__ import annotations

import pytest
import torch

from rsfm_core.model import EncoderOutput

from .conftest import make_modality, micro_model

D = 32  # conftest.MICRO["dim"]


def _check(out: EncoderOutput, B: int, h: int, w: int, mods: set[str]) -> None:
    assert out.dense.shape == (B, D, h, w)
    assert out.pooled.shape == (B, D)
    assert out.valid.shape == (B, h, w) and out.valid.dtype == torch.bool
    assert set(out.modalities) == mods == set(out.modality_valid)
    for f in out.modalities.values():
        assert f.shape == (B, D, h, w) and torch.isfinite(f).all()
    assert torch.isfinite(out.dense).all() and torch.isfinite(out.pooled).all()


def test_s2_only():
    out = micro_model()({"s2": make_modality("sentinel2_l2a", T=3, H=16, W=12)})
    _check(out, 2, 4, 3, {"s2"})


def test_s1_only():
    out = micro_model()({"s1": make_modality("sentinel1_grd", T=2, H=8, W=8)})
    _check(out, 2, 2, 2, {"s1"})


def test_s2_s1_time_series_with_different_T_and_intermediates():
    batch = {
        "s2": make_modality("sentinel2_l2a", T=5, H=16, W=16, seed=1),
        "s1": make_modality("sentinel1_grd", T=2, H=16, W=16, seed=2),
    }
    out = micro_model()(batch, intermediate_layers=[0, -1])
    _check(out, 2, 4, 4, {"s2", "s1"})
    assert len(out.intermediates) == 2
    assert all(t.shape == (2, D, 4, 4) for t in out.intermediates)


def test_enmap_224_bands_grouped():
    model = micro_model()
    assert model.config.modalities["hs"].groups == 4
    out = model({"hs": make_modality("enmap", T=1, H=8, W=8)})
    _check(out, 2, 2, 2, {"hs"})


def test_enmap_band_subset_leaves_some_groups_empty():
    # Only VNIR bands: the SWIR groups have no band, their tokens are invalid, output finite.
    bands = tuple(f"B{i:03d}" for i in range(1, 60))
    out = micro_model()({"hs": make_modality("enmap", T=2, H=8, W=8, bands=bands)})
    _check(out, 2, 2, 2, {"hs"})


def test_highres_rgb_with_larger_patch_on_the_same_token_grid():
    batch = {
        "s2": make_modality("sentinel2_l2a", T=2, H=8, W=12, B=1),
        "rgb": make_modality("rgb_highres", T=1, H=80, W=120, B=1),  # 1 m, patch 40
    }
    _check(micro_model()(batch), 1, 2, 3, {"s2", "rgb"})


def test_mismatched_token_grids_raise_naming_modalities_and_shapes():
    batch = {
        "s2": make_modality("sentinel2_l2a", T=1, H=16, W=16, B=1),
        "s1": make_modality("sentinel1_grd", T=1, H=8, W=8, B=1),
    }
    with pytest.raises(ValueError, match=r"s2: 16x16 px / patch 4 -> 4x4 tokens.*s1: 8x8 px"):
        micro_model()(batch)


def test_other_input_errors_are_clear():
    model = micro_model()
    with pytest.raises(ValueError, match="not a multiple of its patch size 4"):
        model({"s2": make_modality("sentinel2_l2a", T=1, H=10, W=8)})
    with pytest.raises(ValueError, match="unknown modalities.*'l8'"):
        model({"l8": make_modality("landsat8_oli", T=1, H=8, W=8)})
    with pytest.raises(ValueError, match="declared for sentinel2_l2a"):
        model({"s2": make_modality("sentinel1_grd", T=1, H=8, W=8)})
    with pytest.raises(ValueError, match="no band 'B99'"):
        d = make_modality("sentinel2_l2a", T=1, H=8, W=8, bands=("B02", "B03"))
        d.bands = ("B02", "B99")
        model({"s2": d})
