"""``pos_offset``: a crop embedded at its token offset sees the full input's positions."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from .conftest import make_modality, micro_model

SENSORS = {"s2": "sentinel2_l2a", "hs": "enmap"}  # hs: 4 spectral groups


def _crop(d, r: int, c: int, h: int, w: int, p: int):
    """Token window (r, c, h, w) of ``d`` (B, T, C, H, W) with patch ``p``."""
    ys, xs = slice(r * p, (r + h) * p), slice(c * p, (c + w) * p)
    return replace(d, pixels=d.pixels[..., ys, xs], valid=d.valid[..., ys, xs])


def _embed(model, name, d, pos_offset=None):
    """Patch-embedding tokens as (B*T*G, h, w, D) and their validity (B*T*G, h, w)."""
    p = model.config.modalities[name].patch
    h, w = d.shape_hw[0] // p, d.shape_hw[1] // p
    tokens, tv = model.patch_embed(
        d.pixels, d.valid, model.band_set(name, d), name, pos_offset=pos_offset
    )
    return tokens.unflatten(1, (h, w)), tv.unflatten(1, (h, w))  # (BTG, h, w, D), (BTG, h, w)


@pytest.mark.parametrize("name", ["s2", "hs"])
def test_crop_with_its_offset_equals_the_full_inputs_tokens(name):
    model = micro_model()
    p = model.config.modalities[name].patch
    full = make_modality(SENSORS[name], T=2, H=7 * p, W=6 * p, seed=21)
    ref, ref_valid = _embed(model, name, full)
    r, c, h, w = 2, 3, 4, 2
    crop = _crop(full, r, c, h, w, p)
    with torch.no_grad():
        tokens, valid = _embed(model, name, crop, pos_offset=(r, c))
        local, _ = _embed(model, name, crop)
    window = (slice(None), slice(r, r + h), slice(c, c + w))
    torch.testing.assert_close(tokens, ref[window], rtol=1e-5, atol=1e-5)
    assert torch.equal(valid, ref_valid[window])
    assert not torch.allclose(local, ref[window], atol=1e-3)  # without the offset: differs


def test_per_sample_offsets_match_each_samples_crop():
    model = micro_model()
    name, p = "hs", model.config.modalities["hs"].patch
    full = make_modality(SENSORS[name], T=2, H=6 * p, W=6 * p, seed=22)
    ref, _ = _embed(model, name, full)  # (B*T*G, h, w, D)
    ref = ref.unflatten(0, (2, -1))  # (B, T*G, h, w, D)
    offsets = [(0, 3), (2, 1)]
    crops = [_crop(full, r, c, 3, 2, p) for r, c in offsets]
    batch = replace(
        crops[0],
        pixels=torch.stack([crops[b].pixels[b] for b in range(2)]),
        valid=torch.stack([crops[b].valid[b] for b in range(2)]),
    )  # sample b is crop b of sample b
    tokens, _ = _embed(model, name, batch, pos_offset=torch.tensor(offsets))
    tokens = tokens.unflatten(0, (2, -1))  # (B, T*G, h, w, D)
    for b, (r, c) in enumerate(offsets):
        torch.testing.assert_close(tokens[b], ref[b, :, r : r + 3, c : c + 2], rtol=1e-5, atol=1e-5)


def test_zero_offset_is_the_default_exactly_and_errors_name_the_shape():
    model = micro_model()
    batch = {
        "s2": make_modality("sentinel2_l2a", T=2, H=12, W=16, seed=23),
        "hs": make_modality("enmap", T=1, H=12, W=16, seed=24),
    }
    with torch.no_grad():
        base = model(batch)
        out = model(batch, pos_offset=(0, 0))
        assert torch.equal(out.dense, base.dense) and torch.equal(out.pooled, base.pooled)
        # per-sample offsets (a tensor, read on the device: the table is added after the
        # fused op instead of inside it) equal the pair path up to float32 rounding
        out = model(batch, pos_offset=torch.zeros(2, 2, dtype=torch.long))
        torch.testing.assert_close(out.dense, base.dense, rtol=1e-5, atol=1e-5)
        pair = model(batch, pos_offset=(5, 7)).dense
        rows = model(batch, pos_offset=torch.tensor([[5, 7], [5, 7]])).dense
        torch.testing.assert_close(pair, rows, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(pair, base.dense, atol=1e-3)
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(B, 2\) = \(2, 2\).*\(3, 2\)"):
        model(batch, pos_offset=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model(batch, pos_offset=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="pair of ints"):
        model(batch, pos_offset=(1.5, 2))
