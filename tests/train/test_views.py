"""Views: exact token correspondence through crops, dates, flips and rotations; date
subsets; modality dropout that never empties a view; collation into a ViewPair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rsfm_train.data.views import (
    ViewSpec,
    choose_dates,
    collate_views,
    d4_positions,
    drop_modality,
    make_views,
    token_grid,
)

from rsfm_core.sample import Grid, ModalityData

TOKEN_M = 40.0  # every modality's token covers 40 m


def _ids_modality(name: str, h: int, w: int, patch: int, T: int, seed: int) -> ModalityData:
    """Band 0: a unique ground ID per pixel (global row * W + col); band 1: the frame's
    date; valid where ID % 7 != 0 so that masks must move with the pixels."""
    H, W = h * patch, w * patch
    ids = torch.arange(H * W, dtype=torch.float32).view(H, W)
    rng = np.random.default_rng(seed)
    dates = torch.tensor(np.sort(rng.choice(np.arange(18000, 18400), T, replace=False)))
    pixels = torch.stack(
        [torch.stack([ids, torch.full((H, W), float(d))]) for d in dates.tolist()]
    )  # (T, 2, H, W)
    valid = (ids.long() % 7 != 0).expand(T, H, W).clone()
    res = TOKEN_M / patch
    grid = Grid("EPSG:32632", (res, 0.0, 500000.0, 0.0, -res, 5000000.0), H, W)
    return ModalityData(pixels, valid, dates, f"fake_{name}", ("id", "date"), grid)


def _sample(h: int, w: int, spec: dict[str, tuple[int, int]], seed: int = 0) -> dict:
    return {n: _ids_modality(n, h, w, p, T, seed + i) for i, (n, (p, T)) in enumerate(spec.items())}


def _ground_token(block: torch.Tensor, patch: int, W: int) -> tuple[int, int]:
    """The single ground token whose pixels fill ``block`` (patch x patch IDs)."""
    ids = block.long().reshape(-1)
    rows, cols = ids // W, ids % W
    toks = set(zip((rows // patch).tolist(), (cols // patch).tolist()))
    assert len(toks) == 1, f"a token block mixes ground tokens {toks}"
    return toks.pop()


def _check_pairs(sample, sv, spec: ViewSpec) -> int:
    n = spec.crop_tokens
    m = int(sv.pair_valid.sum())
    assert bool(sv.pair_valid[:m].all()) and not bool(sv.pair_valid[m:].any())
    for name, d in sample.items():
        p, W = spec.patches[name], d.shape_hw[1]
        for view in (sv.view1[name], sv.view2[name]):
            ids, dates = view.pixels[:, 0], view.pixels[:, 1]  # (T, H, W)
            assert torch.equal(view.valid, ids.long() % 7 != 0)  # masks moved with pixels
            assert torch.equal(dates, view.dates[:, None, None].float().expand_as(dates))
        grounds = []
        for view, index in ((sv.view1[name], sv.index1), (sv.view2[name], sv.index2)):
            g = []
            for k in index[:m].tolist():
                i, j = divmod(k, n)
                g.append(
                    _ground_token(view.pixels[0, 0, i * p : (i + 1) * p, j * p : (j + 1) * p], p, W)
                )
            grounds.append(g)
        assert grounds[0] == grounds[1], f"{name}: paired tokens cover different ground"
        # every ground token present in both views is paired (and nothing else)
        both = [
            {_ground_token(v.pixels[0, 0, i * p : (i + 1) * p, j * p : (j + 1) * p], p, W)
             for i in range(n) for j in range(n)}
            for v in (sv.view1[name], sv.view2[name])
        ]  # fmt: skip
        assert set(grounds[0]) == both[0] & both[1] and len(set(grounds[0])) == m
    return m


@pytest.mark.parametrize(
    "mods",
    [
        {"s2": (4, 5), "s1": (4, 3)},  # S2 and S1 at 10 m, patch 4
        {"s2": (4, 4), "twenty": (2, 3)},  # a hypothetical 20 m modality with patch 2
    ],
    ids=["s2_s1", "10m_20m"],
)
def test_token_correspondence_is_exact(mods):
    spec = ViewSpec({n: p for n, (p, _) in mods.items()}, crop_tokens=4, dates_per_view=2,
                    min_overlap=0.1)  # fmt: skip
    syms, overlaps = set(), set()
    for seed in range(40):
        sample = _sample(7, 9, mods, seed)
        rng = np.random.default_rng(seed)
        sv = make_views(sample, spec, rng, f"s{seed}")
        overlaps.add(_check_pairs(sample, sv, spec))
        first = next(iter(sample))
        # which symmetry view 1 got: where does local token 0 land?
        syms.add(
            int(
                torch.nonzero(sv.view1[first].pixels[0, 0] == sv.view1[first].pixels[0, 0].min())[
                    0, 0
                ]
            )
        )
    assert len(overlaps) > 3  # partial overlaps of several sizes were checked
    assert len(syms) > 1  # rotations/flips happened


def test_correspondence_with_highres_rgb():
    """rgb_highres-like 1 m pixels with patch 40 next to 10 m S2 with patch 4."""
    mods = {"s2": (4, 2), "rgb": (40, 1)}
    spec = ViewSpec({"s2": 4, "rgb": 40}, crop_tokens=3, dates_per_view=1, min_overlap=0.1)
    for seed in range(4):
        sample = _sample(4, 5, mods, seed)
        sv = make_views(sample, spec, np.random.default_rng(seed), "rgb")
        assert sv.view1["rgb"].pixels.shape == (1, 2, 120, 120)
        assert sv.view1["s2"].pixels.shape == (1, 2, 12, 12)
        _check_pairs(sample, sv, spec)


def test_d4_positions_permute_and_identity():
    assert np.array_equal(d4_positions(3, (0, False)), np.arange(9))
    for k in range(4):
        for flip in (False, True):
            pos = d4_positions(5, (k, flip))
            assert sorted(pos.tolist()) == list(range(25))
    # a quarter turn counter-clockwise moves the top-right token to the top-left
    assert int(d4_positions(3, (1, False))[2]) == 0


def test_min_overlap_and_fixed_P():
    spec = ViewSpec({"s2": 4}, crop_tokens=4, dates_per_view=1, min_overlap=0.5)
    for seed in range(30):
        sv = make_views(_sample(10, 10, {"s2": (4, 1)}), spec, np.random.default_rng(seed), "x")
        assert sv.index1.shape == (16,) and sv.index1.dtype == torch.int64
        assert int(sv.pair_valid.sum()) >= 8


def test_date_subsets_differ_and_pad():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = choose_dates(rng, 5, 4)
        b = choose_dates(rng, 5, 4, avoid=a)
        assert len(set(a.tolist())) == 4 and list(a) == sorted(a) and not np.array_equal(a, b)
    assert np.array_equal(choose_dates(rng, 3, 4), [0, 1, 2])
    spec = ViewSpec({"s2": 4, "s1": 4}, crop_tokens=2, dates_per_view=3)
    sample = _sample(3, 3, {"s2": (4, 5), "s1": (4, 2)})
    sv = make_views(sample, spec, np.random.default_rng(1), "d")
    for name in ("s2", "s1"):
        for v in (sv.view1[name], sv.view2[name]):
            assert v.num_dates == 3
            real = v.valid.flatten(1).any(1)
            assert set(v.dates[real].tolist()) <= set(sample[name].dates.tolist())
    assert not sv.view1["s1"].valid[2].any()  # S1 has 2 dates: the third frame is padding
    assert not torch.equal(sv.view1["s2"].dates, sv.view2["s2"].dates)


def _mixed_batch(seed: int, n: int = 4):
    spec = ViewSpec({"s2": 4, "s1": 4}, crop_tokens=2, dates_per_view=1, modality_dropout=0.5)
    items = []
    for i in range(n):
        mods = {"s2": (4, 2), "s1": (4, 2)} if i else {"s2": (4, 2)}  # sample 0 lacks S1
        items.append(
            make_views(
                _sample(3, 3, mods, seed + i), spec, np.random.default_rng(seed + i), f"k{i}"
            )
        )
    return spec, items


def test_modality_dropout_never_empties_a_view():
    kinds = set()
    for seed in range(60):
        spec, items = _mixed_batch(seed)
        vp = collate_views(items, spec, np.random.default_rng(seed))
        for view in (vp.view1, vp.view2):
            assert view, "a view lost every modality"
            assert "s2" in view  # sample 0 has only S2: dropping it would empty that sample
            kinds.add(tuple(view))
            if "s1" in view:  # the sample that lacks S1 is an all-invalid stand-in
                assert not view["s1"].valid[0].any() and view["s1"].valid[1:].any()
    assert kinds == {("s2",), ("s2", "s1")}
    # two full samples: optical-only and SAR-only views both occur over many draws
    views = [{"s2": 0, "s1": 0}] * 3
    drops = {drop_modality(np.random.default_rng(s), views, ("s2", "s1"), 0.5) for s in range(100)}
    assert drops == {None, "s2", "s1"}


def test_collated_shapes():
    spec, items = _mixed_batch(3)
    vp = collate_views(items, spec, np.random.default_rng(0))
    assert vp.index1.shape == vp.index2.shape == vp.pair_valid.shape == (4, 4)
    assert vp.sample_ids == ["k0", "k1", "k2", "k3"]
    assert vp.view1["s2"].pixels.shape == (4, 1, 2, 8, 8)


def test_bad_samples_raise_with_the_key():
    spec = ViewSpec({"s2": 4, "s1": 4}, crop_tokens=4, dates_per_view=1)
    with pytest.raises(ValueError, match="sample small: 3x3 tokens is smaller"):
        make_views(_sample(3, 3, {"s2": (4, 1)}), spec, np.random.default_rng(0), "small")
    bad = {"s2": _ids_modality("s2", 5, 5, 4, 1, 0), "s1": _ids_modality("s1", 4, 4, 4, 1, 0)}
    with pytest.raises(ValueError, match="token grids of the modalities disagree"):
        token_grid(bad, {"s2": 4, "s1": 4})
    with pytest.raises(ValueError, match="token ground sizes disagree"):
        token_grid({"a": _ids_modality("a", 4, 4, 4, 1, 0), "b": _ids_modality("b", 8, 8, 2, 1, 0)},
                   {"a": 4, "b": 4})  # fmt: skip


def _real(sensor: str, T: int = 2, H: int = 16, seed: int = 0) -> ModalityData:
    from rsfm_core import sensors

    bands = sensors.get(sensor).band_names
    g = torch.Generator().manual_seed(seed)
    px = torch.rand(T, len(bands), H, H, generator=g) * 0.3 + 0.05
    if sensors.get(sensor).is_sar:
        px = px * 10 - 20  # dB
    return ModalityData(px, torch.ones(T, H, H, dtype=torch.bool), torch.arange(T) + 18000,
                        sensor, bands)  # fmt: skip


def test_spectral_views_subset_optical_bands_and_leave_sar_alone():
    spec = ViewSpec({"s2": 4, "s1": 4}, crop_tokens=2, dates_per_view=2, band_keep=0.5,
                    gain_jitter=0.1, rotate_flip=False)  # fmt: skip
    sample = {"s2": _real("sentinel2_l2a"), "s1": _real("sentinel1_grd", seed=1)}
    seen = set()
    for seed in range(8):
        rng = np.random.default_rng(seed)
        items = [make_views(sample, spec, rng, f"k{i}") for i in range(3)]
        pair = collate_views(items, spec, rng)
        for view in (pair.view1, pair.view2):
            s2 = view["s2"]
            C = len(s2.bands)
            assert 6 <= C <= 12 and s2.pixels.shape[2] == C  # >= ceil(0.5 * 12) bands
            assert list(s2.bands) == sorted(s2.bands, key=list(sample["s2"].bands).index)
            seen.add(s2.bands)
            assert view["s1"].bands == ("VV", "VH")  # SAR keeps its bands
        # SAR values are cut, never scaled: every value of a view is one of the sample's
        sar = items[0].view1["s1"].pixels
        assert bool(torch.isin(sar, sample["s1"].pixels).all())
        opt = items[0].view1["s2"].pixels  # optical values are scaled by the gains
        assert not bool(torch.isin(opt[opt > 0], sample["s2"].pixels).all())
    assert len(seen) > 4  # subsets vary between batches


def test_gain_jitter_scales_each_optical_band_by_one_factor():
    spec = ViewSpec({"s2": 4}, crop_tokens=4, dates_per_view=1, gain_jitter=0.2,
                    rotate_flip=False, min_overlap=1.0)  # fmt: skip
    d = _real("sentinel2_l2a", T=1)
    sv = make_views({"s2": d}, spec, np.random.default_rng(3), "k")
    g = sv.view1["s2"].pixels / d.pixels  # the whole 16 px sample is the view
    per_band = g.flatten(2)  # (1, C, H*W): one factor per band
    assert torch.allclose(per_band, per_band[..., :1].expand_as(per_band), rtol=1e-5)
    factors = per_band[0, :, 0]
    assert 0.5 - 1e-6 <= float(factors.min()) and float(factors.max()) <= 1.5 + 1e-6
    assert float(factors.std()) > 0.05  # not one global factor
    plain = ViewSpec({"s2": 4}, crop_tokens=4, dates_per_view=1, rotate_flip=False,
                     min_overlap=1.0)  # fmt: skip
    sv = make_views({"s2": d}, plain, np.random.default_rng(3), "k")
    assert torch.equal(sv.view1["s2"].pixels, d.pixels)  # off by default: untouched
