"""Invariances checked on values (not only shapes)."""

from __future__ import annotations

from dataclasses import replace

import torch

from .conftest import make_modality, micro_model

TOL = dict(rtol=1e-4, atol=1e-5)


def _permute_bands(d, perm, move_pixels: bool):
    """Permute the band names; with ``move_pixels`` the C axis moves with them."""
    pixels = d.pixels[:, :, perm] if move_pixels else d.pixels
    return replace(d, pixels=pixels, bands=tuple(d.bands[i] for i in perm))


def test_permuting_bands_with_descriptors_leaves_output_unchanged():
    model = micro_model()
    batch = {
        "s2": make_modality("sentinel2_l2a", T=2, H=8, W=8, seed=3),
        "hs": make_modality("enmap", T=1, H=8, W=8, seed=4),
    }
    out = model(batch)
    g = torch.Generator().manual_seed(0)
    permuted = {
        n: _permute_bands(d, torch.randperm(len(d.bands), generator=g), True)
        for n, d in batch.items()
    }
    out_p = model(permuted)
    torch.testing.assert_close(out_p.dense, out.dense, **TOL)
    for n in batch:
        torch.testing.assert_close(out_p.modalities[n], out.modalities[n], **TOL)


def test_permuting_descriptors_alone_changes_output():
    model = micro_model()
    d = make_modality("sentinel2_l2a", T=2, H=8, W=8, seed=5)
    out = model({"s2": d})
    perm = torch.arange(len(d.bands)).roll(1)
    out_p = model({"s2": _permute_bands(d, perm, move_pixels=False)})
    diff = (out_p.dense - out.dense).abs().max()
    assert diff > 1e-2 * out.dense.abs().max(), f"output barely changed ({diff:.2e})"


def test_dropping_a_fully_invalid_frame_equals_masking_it():
    model = micro_model()
    s2 = make_modality("sentinel2_l2a", T=4, H=8, W=8, seed=6)
    s2.valid[:, 2] = False
    s2.pixels[:, 2] = torch.randn_like(s2.pixels[:, 2]) * 50.0  # garbage must not matter
    s1 = make_modality("sentinel1_grd", T=2, H=8, W=8, seed=7)
    masked = model({"s2": s2, "s1": s1})
    dropped = model({"s2": s2.select_dates([0, 1, 3]), "s1": s1})
    torch.testing.assert_close(masked.dense, dropped.dense, **TOL)
    torch.testing.assert_close(masked.pooled, dropped.pooled, **TOL)
    torch.testing.assert_close(masked.modalities["s2"], dropped.modalities["s2"], **TOL)


def test_a_fully_invalid_modality_equals_a_missing_one():
    model = micro_model()
    s2 = make_modality("sentinel2_l2a", T=2, H=8, W=8, seed=8)
    s1 = make_modality("sentinel1_grd", T=2, H=8, W=8, seed=9)
    s1.valid[:] = False
    both, alone = model({"s2": s2, "s1": s1}), model({"s2": s2})
    torch.testing.assert_close(both.dense, alone.dense, **TOL)
    assert not both.modality_valid["s1"].any()
    assert (both.modalities["s1"] == 0).all()


def test_reordering_dates_with_timestamps_leaves_fused_output_unchanged():
    model = micro_model()
    s2 = make_modality("sentinel2_l2a", T=5, H=8, W=8, seed=10)
    s1 = make_modality("sentinel1_grd", T=3, H=8, W=8, seed=11)
    out = model({"s2": s2, "s1": s1})
    shuffled = {"s2": s2.select_dates([3, 0, 4, 2, 1]), "s1": s1.select_dates([2, 0, 1])}
    out_s = model(shuffled)
    torch.testing.assert_close(out_s.dense, out.dense, **TOL)
    torch.testing.assert_close(out_s.pooled, out.pooled, **TOL)
    # ... while the dates themselves do matter
    moved = replace(s2, dates=s2.dates + 100)
    assert (model({"s2": moved, "s1": s1}).dense - out.dense).abs().max() > 1e-4
