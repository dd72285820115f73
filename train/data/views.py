"""Two views of one sample with exact token correspondence, and their collation.

A *view* is a square window of ``n x n`` tokens cut from a sample (all modalities at the
same ground window), a subset of its dates, and one of the 8 symmetries of the square
(flips and 90-degree rotations). Every modality of a sample has its own pixel size and
patch, but one token covers the same ground in all of them (``patch x pixel size`` is
shared), so the sample has one token grid ``(h, w)`` and windows are chosen in tokens:
a window starting at token ``(r, c)`` starts at pixel ``(r * patch, c * patch)`` of each
modality. Crops therefore always start on token boundaries and correspondence is exact.

Correspondence: a ground token ``(R, C)`` of the sample lies at local token
``(R - r, C - c)`` of a view with origin ``(r, c)``; the view's symmetry then moves it.
The same function (:func:`_d4`) transforms the pixels, the validity and an ``arange``
grid of token indices, so the index that says where each token went can never disagree
with the pixels (:func:`d4_positions`). Pairs are the ground tokens in both windows, in
row-major ground order, padded to ``P = n * n`` (the largest possible overlap) with
``pair_valid`` False so that every batch has the same shapes.

Decisions:
- Windows overlap by at least ``min_overlap`` of a view's tokens: view 1's origin is
  uniform; view 2's is uniform over the origins that satisfy the overlap.
- Date subsets are drawn per modality (S1 and S2 dates differ in real data) and view 2's
  subset differs from view 1's whenever the modality has more than ``dates_per_view``
  dates. Samples with fewer dates are padded with invalid frames (date: the last date).
- Modality dropout is decided per micro-batch and per view (one modality of the view is
  removed from the whole batch, so it costs no compute), never removing a sample's last
  modality. Views carry no ``grid``: after a rotation an affine grid would be wrong.
- Spectral views (off by default; docs/training.md "Recipe"): ``band_keep < 1`` gives each
  view of a micro-batch its own random subset of an optical modality's bands (at least
  ``ceil(band_keep * C)``, at least 2; the same subset for the batch, so it collates), so
  the two views of a location see different bands and must agree through the band
  hypernetwork; ``gain_jitter`` multiplies every optical band of a sample's view by
  ``1 + gain_jitter * N(0, 1)`` (clipped to [0.5, 1.5]): calibration and atmosphere
  differences, so that the exact spectrum alone does not identify a location. SAR
  modalities are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from rsfm_core.sample import ModalityData

Origin = tuple[int, int]  # (row, col) of a window's top-left token in the sample grid
Symmetry = tuple[int, bool]  # (quarter turns counter-clockwise, flip left-right first)


@dataclass
class ViewPair:
    """One micro-batch of B samples, two views each (the training engine's input)."""

    view1: dict[str, ModalityData]  # batched [B, T1, C, H, W] per modality in the view
    view2: dict[str, ModalityData]  # batched; another window, other dates, maybe fewer modalities
    index1: torch.Tensor  # (B, P) int64 flat token index row * w1 + col in view 1
    index2: torch.Tensor  # (B, P) int64 token of view 2 covering the same ground
    pair_valid: torch.Tensor  # (B, P) bool, False for padding pairs
    sample_ids: list[str] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.index1.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ViewPair:
        def move(views: dict[str, ModalityData]) -> dict[str, ModalityData]:
            return {
                k: replace(
                    d,
                    pixels=d.pixels.to(device, non_blocking=non_blocking),
                    valid=d.valid.to(device, non_blocking=non_blocking),
                    dates=d.dates.to(device, non_blocking=non_blocking),
                )
                for k, d in views.items()
            }

        return ViewPair(
            move(self.view1),
            move(self.view2),
            self.index1.to(device, non_blocking=non_blocking),
            self.index2.to(device, non_blocking=non_blocking),
            self.pair_valid.to(device, non_blocking=non_blocking),
            list(self.sample_ids),
        )

    def pin_memory(self) -> ViewPair:
        """Called by ``DataLoader(pin_memory=True)``."""

        def pin(views: dict[str, ModalityData]) -> dict[str, ModalityData]:
            return {
                k: replace(
                    d,
                    pixels=d.pixels.pin_memory(),
                    valid=d.valid.pin_memory(),
                    dates=d.dates.pin_memory(),
                )
                for k, d in views.items()
            }

        return ViewPair(
            pin(self.view1),
            pin(self.view2),
            self.index1.pin_memory(),
            self.index2.pin_memory(),
            self.pair_valid.pin_memory(),
            list(self.sample_ids),
        )


@dataclass(frozen=True)
class ViewSpec:
    """How views are cut. ``patches``: modality -> pixels per token side (its keys, in
    order, are the run's modalities); ``crop_tokens``: tokens per view side."""

    patches: Mapping[str, int]
    crop_tokens: int
    dates_per_view: int
    modality_dropout: float = 0.0
    min_overlap: float = 0.25
    rotate_flip: bool = True
    band_keep: float = 1.0  # least fraction of an optical modality's bands a view keeps
    gain_jitter: float = 0.0  # std of the per-band gain of optical bands, per sample view

    def __post_init__(self) -> None:
        if not self.patches or any(p < 1 for p in self.patches.values()):
            raise ValueError(
                f"ViewSpec: patches must map modalities to >= 1, got {dict(self.patches)}"
            )
        if self.crop_tokens < 1 or self.dates_per_view < 1:
            raise ValueError("ViewSpec: crop_tokens and dates_per_view must be >= 1")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(
                f"ViewSpec: modality_dropout must be in [0, 1), got {self.modality_dropout}"
            )
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(f"ViewSpec: min_overlap must be in (0, 1], got {self.min_overlap}")
        if not 0.0 < self.band_keep <= 1.0 or not 0.0 <= self.gain_jitter < 0.5:
            raise ValueError(
                f"ViewSpec: need 0 < band_keep <= 1 and 0 <= gain_jitter < 0.5, got "
                f"{self.band_keep}, {self.gain_jitter}"
            )

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(self.patches)

    @property
    def pairs(self) -> int:
        """P, the fixed number of pairs per sample (the largest overlap)."""
        return self.crop_tokens * self.crop_tokens


@dataclass
class SampleViews:
    """The two views of one sample, unbatched, before collation."""

    key: str
    view1: dict[str, ModalityData]  # [T, C, H, W] per modality
    view2: dict[str, ModalityData]
    index1: torch.Tensor  # (P,)
    index2: torch.Tensor  # (P,)
    pair_valid: torch.Tensor  # (P,)


# ---------------------------------------------------------------------------- geometry


def token_grid(sample: Mapping[str, ModalityData], patches: Mapping[str, int]) -> tuple[int, int]:
    """The sample's shared token grid ``(h, w)``; raises naming each modality if the
    modalities disagree (in token counts, or in token ground size when grids are known)."""
    grids, ground = {}, {}
    for name, d in sample.items():
        p = patches[name]
        H, W = d.shape_hw
        if H % p or W % p:
            raise ValueError(
                f"modality {name!r}: {H}x{W} px is not a multiple of its patch {p}; chips must "
                f"be whole tokens (rsfm prepare --chip a multiple of the token size)"
            )
        grids[name] = (H // p, W // p)
        if d.grid is not None:
            ground[name] = d.grid.res[0] * p
    if len(set(grids.values())) > 1:
        detail = ", ".join(f"{n}: {g[0]}x{g[1]}" for n, g in grids.items())
        raise ValueError(f"token grids of the modalities disagree ({detail} tokens)")
    sizes = list(ground.values())
    if sizes and max(sizes) - min(sizes) > 1e-6 * max(sizes):
        detail = ", ".join(f"{n}: {s:g} m" for n, s in ground.items())
        raise ValueError(f"token ground sizes disagree ({detail}); check each modality's patch")
    return next(iter(grids.values()))


def _d4(x: np.ndarray, sym: Symmetry) -> np.ndarray:
    """Apply a symmetry of the square to the last two axes (pixels, masks or index grids);
    ``rot90`` turns counter-clockwise, from the row axis towards the column axis."""
    k, flip = sym
    if flip:
        x = np.flip(x, -1)
    return np.rot90(x, k, axes=(-2, -1)) if k % 4 else x


def d4_positions(n: int, sym: Symmetry) -> np.ndarray:
    """``(n * n,)`` int64: the flat index that local token ``i`` has after ``sym``."""
    moved = _d4(np.arange(n * n).reshape(n, n), sym).reshape(-1)  # moved[new] = old
    pos = np.empty(n * n, dtype=np.int64)
    pos[moved] = np.arange(n * n)
    return pos


def choose_origins(
    rng: np.random.Generator, h: int, w: int, n: int, min_overlap: float
) -> tuple[Origin, Origin]:
    """Origins of two ``n x n`` windows in an ``h x w`` token grid sharing at least
    ``ceil(min_overlap * n * n)`` tokens."""
    r1, c1 = int(rng.integers(0, h - n + 1)), int(rng.integers(0, w - n + 1))
    rows = np.clip(n - np.abs(np.arange(h - n + 1) - r1), 0, None)  # overlap rows per r2
    cols = np.clip(n - np.abs(np.arange(w - n + 1) - c1), 0, None)
    need = max(1, math.ceil(min_overlap * n * n - 1e-9))
    cand = np.argwhere(rows[:, None] * cols[None, :] >= need)  # (K, 2); holds (r1, c1)
    r2, c2 = cand[int(rng.integers(len(cand)))]
    return (r1, c1), (int(r2), int(c2))


def pair_indices(
    o1: Origin, o2: Origin, n: int, sym1: Symmetry, sym2: Symmetry, P: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``index1, index2 (P,)`` int64 and ``valid (P,)``: the tokens of both views that
    cover each ground token of the overlap (row-major ground order), then padding."""
    rr = np.arange(max(o1[0], o2[0]), min(o1[0], o2[0]) + n)
    cc = np.arange(max(o1[1], o2[1]), min(o1[1], o2[1]) + n)
    R, C = np.meshgrid(rr, cc, indexing="ij")  # ground tokens of the overlap
    i1 = d4_positions(n, sym1)[((R - o1[0]) * n + (C - o1[1])).reshape(-1)]
    i2 = d4_positions(n, sym2)[((R - o2[0]) * n + (C - o2[1])).reshape(-1)]
    m = i1.size
    if m > P:
        raise ValueError(f"pair_indices: {m} overlapping tokens exceed P={P}")
    index1, index2 = np.zeros(P, dtype=np.int64), np.zeros(P, dtype=np.int64)
    index1[:m], index2[:m] = i1, i2
    return torch.from_numpy(index1), torch.from_numpy(index2), torch.arange(P) < m


# ---------------------------------------------------------------------------- dates


def choose_dates(
    rng: np.random.Generator, T: int, k: int, avoid: np.ndarray | None = None
) -> np.ndarray:
    """Sorted indices of ``min(T, k)`` of ``T`` dates, different from ``avoid`` when
    another subset exists (one element swapped, so this never loops)."""
    m = min(T, k)
    idx = np.sort(rng.choice(T, m, replace=False))
    if avoid is not None and m < T and np.array_equal(idx, avoid):
        out = np.setdiff1d(np.arange(T), idx)
        idx[int(rng.integers(m))] = out[int(rng.integers(len(out)))]
        idx = np.sort(idx)
    return idx


# ---------------------------------------------------------------------------- views


def _cut(d: ModalityData, p: int, origin: Origin, n: int, idx: np.ndarray, sym: Symmetry, k: int):
    """One modality of one view: window, dates (padded to ``k`` with invalid all-zero
    frames dated like the last real date), symmetry (pixels and validity alike).

    numpy, not torch: single-threaded, so cheap in the training process (workers=0),
    where torch's intra-op threads make these small copies slow."""
    r, c, s = origin[0] * p, origin[1] * p, n * p
    px = d.pixels.detach().cpu().numpy()[idx, :, r : r + s, c : c + s]  # (T', C, s, s) copy
    ok = d.valid.cpu().numpy()[idx, r : r + s, c : c + s]  # (T', s, s)
    dates = d.dates.cpu().numpy()[idx]
    if len(idx) < k:
        px = np.concatenate([px, np.zeros((k - len(idx), *px.shape[1:]), px.dtype)])
        ok = np.concatenate([ok, np.zeros((k - len(idx), *ok.shape[1:]), bool)])
        dates = np.concatenate([dates, np.repeat(dates[-1:], k - len(idx))])
    return ModalityData(
        pixels=torch.from_numpy(np.ascontiguousarray(_d4(px, sym))),
        valid=torch.from_numpy(np.ascontiguousarray(_d4(ok, sym))),
        dates=torch.from_numpy(dates),
        sensor=d.sensor,
        bands=d.bands,
        grid=None,
    )


def _symmetry(rng: np.random.Generator, enabled: bool) -> Symmetry:
    return (int(rng.integers(4)), bool(rng.integers(2))) if enabled else (0, False)


def make_views(
    sample: Mapping[str, ModalityData], spec: ViewSpec, rng: np.random.Generator, key: str
) -> SampleViews:
    """Two views of ``sample`` (unbatched modalities on one ground window; modalities
    outside ``spec.patches`` are ignored). Raises ValueError naming ``key`` when the sample
    is smaller than a view or its modalities' token grids disagree."""
    sample = {name: sample[name] for name in spec.order if name in sample}
    if not sample:
        raise ValueError(f"sample {key}: none of the run's modalities {list(spec.order)}")
    try:
        h, w = token_grid(sample, spec.patches)
    except ValueError as e:
        raise ValueError(f"sample {key}: {e}") from None
    n, k = spec.crop_tokens, spec.dates_per_view
    if h < n or w < n:
        raise ValueError(
            f"sample {key}: {h}x{w} tokens is smaller than a view ({n}x{n} tokens); "
            "prepare larger chips or lower data.crop_size"
        )
    o1, o2 = choose_origins(rng, h, w, n, spec.min_overlap)
    s1, s2 = _symmetry(rng, spec.rotate_flip), _symmetry(rng, spec.rotate_flip)
    v1, v2 = {}, {}
    for name, d in sample.items():
        p = spec.patches[name]
        d1 = choose_dates(rng, d.num_dates, k)
        d2 = choose_dates(rng, d.num_dates, k, avoid=d1)
        v1[name] = _jitter(_cut(d, p, o1, n, d1, s1, k), rng, spec.gain_jitter)
        v2[name] = _jitter(_cut(d, p, o2, n, d2, s2, k), rng, spec.gain_jitter)
    i1, i2, valid = pair_indices(o1, o2, n, s1, s2, spec.pairs)
    return SampleViews(key, v1, v2, i1, i2, valid)


def _optical(d: ModalityData) -> bool:
    from rsfm_core import sensors

    try:
        return not sensors.get(d.sensor).is_sar
    except sensors.SensorError:
        return False


def _jitter(d: ModalityData, rng: np.random.Generator, sigma: float) -> ModalityData:
    """Per-band gains ``1 + sigma * N(0, 1)`` (clipped to [0.5, 1.5]) on an optical view."""
    if sigma <= 0 or not _optical(d):
        return d
    g = np.clip(1.0 + sigma * rng.standard_normal(d.pixels.shape[1]), 0.5, 1.5)  # (C,)
    return replace(d, pixels=d.pixels * torch.from_numpy(g.astype(np.float32))[:, None, None])


def _band_subset(d: ModalityData, rng: np.random.Generator, keep: float) -> ModalityData:
    """A random subset of an optical modality's bands, the same for the whole batch."""
    C = d.pixels.shape[-3]
    if keep >= 1.0 or C <= 2 or not _optical(d):
        return d
    lo = max(2, math.ceil(keep * C))
    idx = np.sort(rng.choice(C, size=int(rng.integers(lo, C + 1)), replace=False))
    t = torch.from_numpy(idx)
    return replace(d, pixels=d.pixels.index_select(-3, t), bands=tuple(d.bands[i] for i in idx))


# ---------------------------------------------------------------------------- collation


def drop_modality(
    rng: np.random.Generator,
    views: Sequence[Mapping[str, ModalityData]],
    order: Sequence[str],
    p: float,
) -> str | None:
    """With probability ``p``, a modality to remove from these views (one view of each
    sample of a batch), chosen among those whose removal leaves every sample one."""
    present = [n for n in order if any(n in v for v in views)]
    if len(present) < 2 or rng.random() >= p:
        return None
    ok = [n for n in present if all(any(m in v for m in present if m != n) for v in views)]
    return ok[int(rng.integers(len(ok)))] if ok else None


def _stack(views: Sequence[ModalityData | None], name: str) -> ModalityData:
    """Batch one modality (``None``: a sample that lacks it gets an all-invalid stand-in).
    numpy for the reason given in :func:`_cut`; checks as ``rsfm_core.sample.collate``."""
    first = next(v for v in views if v is not None)
    for i, v in enumerate(views):
        if v is not None and (v.sensor, v.bands, v.pixels.shape) != (
            first.sensor,
            first.bands,
            first.pixels.shape,
        ):
            raise ValueError(
                f"modality {name!r}: sample {i} is {v.sensor} {v.bands} {tuple(v.pixels.shape)}, "
                f"another is {first.sensor} {first.bands} {tuple(first.pixels.shape)}"
            )

    def stack(get, like: torch.Tensor) -> torch.Tensor:
        blank = np.zeros(like.shape, like.numpy().dtype)
        return torch.from_numpy(np.stack([blank if v is None else get(v).numpy() for v in views]))

    return ModalityData(
        pixels=stack(lambda v: v.pixels, first.pixels),  # (B, T, C, H, W)
        valid=stack(lambda v: v.valid, first.valid),  # (B, T, H, W)
        dates=stack(lambda v: v.dates, first.dates),  # (B, T)
        sensor=first.sensor,
        bands=first.bands,
    )


def _collate_view(
    views: Sequence[Mapping[str, ModalityData]], order, drop
) -> dict[str, ModalityData]:
    out = {}
    for name in order:
        have = [v[name] for v in views if name in v]
        if name == drop or not have:
            continue
        out[name] = _stack([v.get(name) for v in views], name)
    return out


def collate_views(
    items: Sequence[SampleViews], spec: ViewSpec, rng: np.random.Generator
) -> ViewPair:
    """Stack unbatched sample views into a :class:`ViewPair`, applying modality dropout
    once per view of the batch (``rng`` draws it)."""
    if not items:
        raise ValueError("collate_views: no samples")
    out = []
    for views in ([it.view1 for it in items], [it.view2 for it in items]):
        drop = drop_modality(rng, views, spec.order, spec.modality_dropout)
        batch = _collate_view(views, spec.order, drop)
        if spec.band_keep < 1.0:  # drawn after dropout: runs without it keep their streams
            batch = {n: _band_subset(d, rng, spec.band_keep) for n, d in batch.items()}
        out.append(batch)
    return ViewPair(
        view1=out[0],
        view2=out[1],
        index1=torch.from_numpy(np.stack([it.index1.numpy() for it in items])),  # (B, P)
        index2=torch.from_numpy(np.stack([it.index2.numpy() for it in items])),  # (B, P)
        pair_valid=torch.from_numpy(np.stack([it.pair_valid.numpy() for it in items])),  # (B, P)
        sample_ids=[it.key for it in items],
    )
