"""The ``spectral_embed`` op (reference backend) against a direct per-band, per-patch loop."""

from __future__ import annotations

import pytest
import rsfm_kernels as rk
import torch
from rsfm_kernels import dispatch


def _naive(x, weight, group_index, G, bias, pos, mean, std, valid):
    """Straight from the docstring's formula, with explicit loops over bands and patches."""
    BT, C, H, W = x.shape
    _, D, p, _ = weight.shape
    h, w = H // p, W // p
    xn = (x.double() - mean.double()[:, None, None]) / std.double()[:, None, None]
    xn = torch.where(valid[:, None], xn, torch.zeros((), dtype=torch.float64))
    out = torch.zeros(BT, G, h * w, D, dtype=torch.float64)
    for c in range(C):
        g = int(group_index[c])
        for i in range(h):
            for j in range(w):
                patch = xn[:, c, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (BT, p, p)
                out[:, g, i * w + j] += torch.einsum("buv,duv->bd", patch, weight[c].double())
    return out + bias.double()[None, :, None] + pos.double()[None, None]


def _inputs(C=13, D=8, p=3, H=6, W=9, BT=3, G=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BT, C, H, W, generator=g) * 0.2 + 0.3
    valid = torch.rand(BT, H, W, generator=g) > 0.25
    x = torch.where(valid[:, None], x, torch.full((), float("nan")))  # NaN under invalid pixels
    weight = torch.randn(C, D, p, p, generator=g)
    gi = torch.randint(0, G - 1, (C,), generator=g)  # last group left empty on purpose
    bias = torch.randn(G, D, generator=g)
    pos = torch.randn((H // p) * (W // p), D, generator=g)
    mean = torch.rand(C, generator=g) * 0.3
    std = torch.rand(C, generator=g) * 0.2 + 0.05
    return x, weight, gi, G, bias, pos, mean, std, valid


@pytest.mark.parametrize("C,p", [(1, 1), (2, 3), (13, 3), (202, 2)])
def test_reference_matches_formula(C, p):
    x, weight, gi, G, bias, pos, mean, std, valid = _inputs(C=C, p=p, H=2 * p, W=3 * p)
    out = rk.spectral_patch_embed(x, weight, gi, G, bias, pos, mean, std, valid)
    ref = _naive(x, weight, gi, G, bias, pos, mean, std, valid)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all(), "NaN under invalid pixels leaked"
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    # the empty last group holds bias + pos only
    torch.testing.assert_close(out[:, G - 1], (bias[G - 1] + pos)[None].expand_as(out[:, G - 1]))


def test_gradients_of_weight_bias_pos_match_the_formula():
    """The op's gradients equal autograd through the explicit per-band, per-patch loop
    (float64), for one random upstream gradient."""
    x, weight, gi, G, bias, pos, mean, std, valid = _inputs()
    for t in (weight, bias, pos):
        t.requires_grad_(True)
    out = rk.spectral_patch_embed(x, weight, gi, G, bias, pos, mean, std, valid)
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad((out * up).sum(), (weight, bias, pos))
    ref = _naive(x, weight, gi, G, bias, pos, mean, std, valid)
    want = torch.autograd.grad((ref * up.double()).sum(), (weight, bias, pos))
    for a, b in zip(got, want):  # weight, bias, pos
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-4)
    # the empty last group takes no weight gradient from any band; its bias still learns
    assert (got[0][gi == G - 1] == 0).all() and got[1][G - 1].abs().sum() > 0


def test_bad_shapes_name_the_problem():
    x, weight, gi, G, bias, pos, mean, std, valid = _inputs()
    with pytest.raises(dispatch.BackendUnavailable, match="pos must be"):
        rk.spectral_patch_embed(x, weight, gi, G, bias, pos[:-1], mean, std, valid)
    with pytest.raises(dispatch.BackendUnavailable, match="not a multiple of the patch size"):
        rk.spectral_patch_embed(x[..., :-1], weight, gi, G, bias, None, mean, std, None)
    with pytest.raises(dispatch.BackendUnavailable, match="no backend named"):
        rk.spectral_patch_embed(x, weight, gi, G, backend="nope")
