"""Physically plausible synthetic multi-sensor scenes: demo data and test fixtures.

A scene is one place on a UTM grid with a land-cover map of K classes and, per sensor,
a time series in physical units (:class:`~rsfm_core.sample.ModalityData`). The physics
(endmember spectra, class mixtures and phenology, backscatter) is in
:mod:`.landcover`; this module draws the maps and renders the sensors.

- **Land cover**: K spatially coherent regions (argmax of K smoothed random fields whose
  biases are fitted to target area shares, sampled through a smooth domain warp so that
  borders are irregular). Cropland is cut into rectangular parcels with their own
  sowing dates.
- **Optical/hyperspectral**: per pixel a linear mixture of endmember spectra with
  date-dependent fractions, integrated over each band's Gaussian response; spatially
  correlated brightness and green-cover variability; small uniform sensor noise. Mixing
  is linear, so band integration and area averaging (``native_resolution``) commute.
- **SAR**: water-cloud model (Attema & Ulaby 1978) from the same cover fractions, +-1 dB
  spatial heterogeneity, urban gamma texture (K-distributed clutter), an additive noise
  floor, then gamma speckle with L looks in linear power, stored in dB.
- **Clouds and gaps**: per date, cloud blobs over optical sensors (thick core: bright and
  invalid; thin haze fringe: valid but brightened); optional missing scan stripes.

Decisions:
- Random streams are keyed by purpose (``_rng(seed, "labels")``, ``("clouds", day)``, ...)
  so the class map and cloud masks do not change when sensors or dates are added.
- Smooth fields are FFT-filtered white noise (periodic), generated at reduced resolution
  when smooth enough and upsampled bilinearly; rendering runs in row chunks, band by band.
- ``ModalityData`` holds 0.0 at invalid pixels (the data-model contract) unless
  ``keep_cloud_values=True``; files hold the sensor's nodata there.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import sensors as _sensors
from ..files import atomic_write_text
from ..io import write_geotiff
from ..sample import Grid, ModalityData, from_days, to_days
from .landcover import (
    CLASS_NAMES,
    ENDMEMBERS,
    LAND_COVERS,
    SAR_EXTINCTION,
    band_spectra,
    cover_fractions,
    sar_tables,
)

log = logging.getLogger(__name__)

_GREEN, _DRY, _SOIL, _SHADE = (
    ENDMEMBERS.index(n) for n in ("green_vegetation", "dry_vegetation", "soil", "shade")
)

# ---------------------------------------------------------------------------- config


@dataclass
class SceneConfig:
    """Everything that defines a scene; the same config and seed give the same arrays.

    ``dates``: None (``num_dates`` evenly spread over days 60-300 of ``year``), a list
    of dates (ISO strings, ``datetime.date`` or int days since 1970) for every sensor,
    or a mapping sensor name -> list. ``native_resolution``: sensors coarser than
    ``gsd_m`` by an integer factor (Landsat, EnMAP: 30 m) are rendered on their own
    coarser grid by area-averaging; otherwise every sensor uses the scene grid.
    """

    size: int = 64
    num_classes: int = 6
    dates: Sequence | Mapping | None = None
    num_dates: int = 4
    year: int = 2021
    sensors: Sequence[str] = ("sentinel2_l2a", "sentinel1_grd")
    seed: int = 0
    cloud_fraction: float = 0.1
    stripe_fraction: float = 0.0
    gsd_m: float = 10.0
    crs: str = "EPSG:32632"
    origin: tuple[float, float] = (600000.0, 5100000.0)  # upper-left x, y (m); ~46 N, 10 E
    region_scale_px: float | None = None  # correlation length of the class fields
    parcel_size_m: float = 300.0
    sar_looks: float = 4.0  # equivalent number of looks of the speckle (S1 IW GRD ~4.4)
    sar_noise_floor_db: float = -28.0  # additive noise-equivalent sigma0
    noise_std: float = 0.002  # additive reflectance noise per band
    native_resolution: bool = False
    keep_cloud_values: bool = False

    def __post_init__(self) -> None:
        self.sensors = tuple(self.sensors)
        if not (8 <= self.size <= 65536):
            raise ValueError(f"size must be 8..65536 pixels, got {self.size}")
        if not (2 <= self.num_classes <= len(LAND_COVERS)):
            raise ValueError(
                f"num_classes must be 2..{len(LAND_COVERS)} ({', '.join(CLASS_NAMES)}), "
                f"got {self.num_classes}"
            )
        if not (0.0 <= self.cloud_fraction < 0.95 and 0.0 <= self.stripe_fraction < 0.95):
            raise ValueError("cloud_fraction and stripe_fraction must be in [0, 0.95)")
        if self.seed < 0 or self.num_dates < 1 or self.gsd_m <= 0 or self.sar_looks <= 0:
            raise ValueError("seed >= 0, num_dates >= 1, gsd_m > 0 and sar_looks > 0 required")
        if not self.sensors:
            raise ValueError("give at least one sensor")
        for s in self.sensors:
            _sensors.get(s)  # raises naming the known sensors


@dataclass
class Scene:
    """A rendered scene: ``scene["sentinel2_l2a"]`` is that sensor's ``ModalityData``."""

    config: SceneConfig
    grid: Grid
    labels: np.ndarray  # [H, W] uint8 class ids on the scene grid
    class_names: tuple[str, ...]
    modalities: dict[str, ModalityData]  # sensor name -> time series in physical units

    def __getitem__(self, sensor: str) -> ModalityData:
        return self.modalities[sensor]

    def class_id(self, name: str) -> int:
        if name not in self.class_names:
            raise KeyError(f"class {name!r} not in this scene ({', '.join(self.class_names)})")
        return self.class_names.index(name)


# ---------------------------------------------------------------------------- random fields


def _rng(seed: int, *key: object) -> np.random.Generator:
    """A generator keyed by purpose, so streams don't shift when others are added."""
    return np.random.default_rng([seed] + [zlib.crc32(str(k).encode()) for k in key])


def _interp_axis(x: np.ndarray, out_idx: np.ndarray, f: float, axis: int) -> np.ndarray:
    """Periodic linear interpolation of ``x`` along ``axis`` at output samples ``out_idx``
    of a grid ``f`` times finer."""
    pos = (out_idx + 0.5) / f - 0.5
    i0 = np.floor(pos).astype(np.int64)
    shape = [1] * x.ndim
    shape[axis] = len(out_idx)
    t = (pos - i0).astype(np.float32).reshape(shape)
    n = x.shape[axis]
    a, b = np.take(x, i0 % n, axis=axis), np.take(x, (i0 + 1) % n, axis=axis)
    b -= a
    b *= t
    b += a
    return b


def _upsample_rows(x: np.ndarray, rows: np.ndarray, w: int, f: int) -> np.ndarray:
    """Rows ``rows`` (``[r, w]``) of ``x`` bilinearly upsampled ``f`` times (periodic)."""
    if f == 1:
        return x[rows, :w]
    return _interp_axis(_interp_axis(x, rows, f, 0), np.arange(w), f, 1)


def _row_chunks(h: int, size: int = 256):
    """Row index arrays of at most ``size`` rows: full-resolution work runs in chunks, so
    temporaries stay small (large fresh allocations page-fault on every use)."""
    for r0 in range(0, h, size):
        yield np.arange(r0, min(h, r0 + size))


def smooth_noise(rng: np.random.Generator, h: int, w: int, sigma_px: float) -> np.ndarray:
    """``[h, w]`` float32 Gaussian random field, zero mean, unit std, correlation
    ``sigma_px``; periodic. Generated at 1/f resolution and upsampled when smooth."""
    f = max(1, int(sigma_px // 4))
    lh, lw = -(-h // f), -(-w // f)
    x = rng.standard_normal((lh, lw), dtype=np.float32)
    a = -2.0 * (np.pi * sigma_px / f) ** 2  # Gaussian transfer function, separable
    X = np.fft.rfft2(x)
    X *= np.exp(a * np.fft.fftfreq(lh) ** 2).astype(np.float32)[:, None]
    X *= np.exp(a * np.fft.rfftfreq(lw) ** 2).astype(np.float32)[None, :]
    x = np.fft.irfft2(X, (lh, lw)).astype(np.float32, copy=False)
    del X
    x -= x.mean()
    x /= x.std() + 1e-12
    if f == 1:
        return np.ascontiguousarray(x[:h, :w])
    out = np.empty((h, w), dtype=np.float32)
    for rows in _row_chunks(h):
        out[rows[0] : rows[-1] + 1] = _upsample_rows(x, rows, w, f)
    return out


def _fit_biases(fields: np.ndarray, share: np.ndarray, iters: int = 25) -> np.ndarray:
    """Biases b such that argmax_k(fields[k] + b[k]) covers about ``share`` of the area."""
    b = np.zeros(len(share), dtype=np.float32)
    for _ in range(iters):
        lab = np.argmax(fields + b[:, None, None], axis=0)
        got = np.bincount(lab.ravel(), minlength=len(share)) / lab.size
        b += 0.5 * (np.log(share) - np.log(np.maximum(got, 1e-4))).astype(np.float32)
    return b


def _class_map(cfg: SceneConfig) -> np.ndarray:
    """``[H, W]`` uint8 class ids: argmax of K smooth fields (drawn at low resolution,
    upsampled bilinearly), then a domain warp (a shifted nearest lookup) that makes
    borders irregular. Everything is periodic, so the warp wraps around."""
    rng, n, K = _rng(cfg.seed, "labels"), cfg.size, cfg.num_classes
    scale = cfg.region_scale_px or max(4.0, min(n / 8, 1000.0 / cfg.gsd_m))  # patches ~1 km
    f = max(1, n // 256)
    lo = -(-n // f)
    fields = np.stack([smooth_noise(rng, lo, lo, scale / f) for _ in range(K)])  # (K, lo, lo)
    share = np.array([c.share for c in LAND_COVERS[:K]], dtype=np.float64)
    fields += _fit_biases(fields, share / share.sum())[:, None, None]
    straight = np.empty((n, n), dtype=np.uint8)
    for rows in _row_chunks(n):
        v = np.stack([_upsample_rows(fields[k], rows, n, f) for k in range(K)])  # (K, r, n)
        straight[rows[0] : rows[-1] + 1] = np.argmax(v, axis=0)
    amp = 0.12 * scale  # warp amplitude, pixels
    warp_y = smooth_noise(rng, n, n, max(1.5, scale / 6))
    warp_x = smooth_noise(rng, n, n, max(1.5, scale / 6))
    labels = np.empty((n, n), dtype=np.uint8)
    cols = np.arange(n)[None, :]
    for rows in _row_chunks(n):
        r = slice(rows[0], rows[-1] + 1)
        y = (np.rint(amp * warp_y[r]).astype(np.int64) + rows[:, None]) % n
        labels[r] = straight[y, (np.rint(amp * warp_x[r]).astype(np.int64) + cols) % n]
    counts = np.bincount(labels.ravel(), minlength=K)
    if (counts == 0).any():
        missing = [CLASS_NAMES[k] for k in np.flatnonzero(counts == 0)]
        log.warning("synthetic scene: classes %s got no pixels (scene too small?)", missing)
    return labels


def _phenology_shift(cfg: SceneConfig, labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` days added to the date: per parcel for cropland (sowing dates differ),
    smooth and small elsewhere."""
    rng, n = _rng(cfg.seed, "phenology"), cfg.size
    p = max(2, int(round(cfg.parcel_size_m / cfg.gsd_m)))
    off_r, off_c = rng.integers(0, p, 2)
    table = rng.normal(0.0, 12.0, (n // p + 2, n // p + 2)).astype(np.float32)
    idx = (np.arange(n) + off_r) // p, (np.arange(n) + off_c) // p
    shift = 5.0 * smooth_noise(rng, n, n, max(2.0, n / 16))
    crop = labels == CLASS_NAMES.index("cropland")
    shift[crop] = table[idx[0][:, None], idx[1][None, :]][crop]
    return shift


# ---------------------------------------------------------------------------- rendering


@dataclass
class _Ground:
    """Date-independent per-pixel state of the scene grid."""

    labels: np.ndarray  # (H, W) uint8
    shift: np.ndarray  # (H, W) phenology shift, days
    bright: np.ndarray  # (H, W) unit field: brightness / backscatter variability
    veg: np.ndarray  # (H, W) unit field: green-cover variability
    class_names: tuple[str, ...]
    scratch: dict = field(default_factory=dict)


def _buf(scratch: dict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A reusable float32 scratch array: fresh large allocations page-fault on every use,
    which costs more than the arithmetic on them."""
    n = math.prod(shape)
    if name not in scratch or scratch[name].size < n:
        scratch[name] = np.empty(n, dtype=np.float32)
    return scratch[name][:n].reshape(shape)


def _fractions(g: _Ground, rows: slice, doy: int) -> np.ndarray:
    """``(E, r, W)`` endmember fractions of the rows ``rows`` on day of year ``doy``."""
    lab = g.labels[rows]
    d = doy + g.shift[rows]
    F = _buf(g.scratch, "fractions", (len(ENDMEMBERS), *lab.shape))
    F.fill(0.0)
    for k, name in enumerate(g.class_names):
        m = lab == k
        if m.any():
            F[:, m] = cover_fractions(name, d[m])
    gi, si = _GREEN, _SOIL
    green = np.clip(F[gi] * (1.0 + 0.08 * g.veg[rows]), 0.0, F[gi] + F[si])
    F[si] -= green - F[gi]  # more green cover, less bare soil
    F[gi] = green
    return F


def _block_mean(x: np.ndarray, f: int) -> np.ndarray:
    """Average ``[..., H, W]`` over f x f blocks."""
    if f == 1:
        return x
    *lead, h, w = x.shape
    return x.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))


def _clouds(cfg: SceneConfig, day: int) -> tuple[np.ndarray, np.ndarray]:
    """``alpha`` (cloud weight 0..1) and ``core`` (thick, invalid) ``[H, W]`` for one date."""
    n, rng = cfg.size, _rng(cfg.seed, "clouds", day)
    frac = min(0.95, cfg.cloud_fraction * rng.uniform(0.5, 1.5))  # cover varies by date
    c = smooth_noise(rng, n, n, max(3.0, n / 14)) + 0.35 * smooth_noise(rng, n, n, max(1.0, n / 60))
    sub = c[:: max(1, n // 512), :: max(1, n // 512)]
    t_core, t_edge = np.quantile(sub, [1.0 - frac, 1.0 - min(1.0, 1.8 * frac)])
    core = c >= t_core
    alpha = np.clip((c - t_edge) / max(t_core - t_edge, 1e-6), 0.0, 1.0) * 0.35
    alpha[core] = 1.0
    return alpha.astype(np.float32), core


def _stripes(cfg: SceneConfig, sensor: str, day: int, rows: slice, w: int) -> np.ndarray:
    """``(r, w)`` True on missing slanted scan stripes (SLC-off-like)."""
    rng = _rng(cfg.seed, "stripes", sensor, day)
    period, phase = 24.0, rng.uniform(0, 24.0)
    r = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    u = r * 0.99 + np.arange(w, dtype=np.float32)[None, :] * 0.14 + phase
    return np.mod(u, period) < cfg.stripe_fraction * period


@dataclass
class _Target:
    """One sensor being rendered: band spectra or SAR tables, output arrays, noise stream."""

    sensor: _sensors.Sensor
    factor: int  # scene pixels per sensor pixel
    days: list[int]
    pixels: np.ndarray  # (T, C, h, w) float32
    valid: np.ndarray  # (T, h, w) bool
    rng: np.random.Generator
    spectra: np.ndarray | None = None  # optical (E + cloud, C); SAR (2, K, C) linear sigma0
    scratch: dict = field(default_factory=dict)


def _render_optical(cfg, g, tg, t, rows, F, clouds) -> None:
    """Rows ``rows`` of date ``t``: mixture spectra, brightness, clouds, noise, gaps.
    Brightness and clouds are folded into the fractions (cloud = one more endmember), so
    a single matmul makes every band; the rest runs band by band, in place, in cache."""
    f = tg.factor
    F = _block_mean(F, f)  # area-averaged cover fractions on the sensor grid
    E, r, w = F.shape
    out_rows = slice(rows.start // f, rows.stop // f)
    weight = 1.0 + 0.04 * _block_mean(g.bright[rows], f)  # (r, w) brightness variability
    valid = np.ones((r, w), dtype=bool)
    Fc = _buf(tg.scratch, "fc", (E + 1, r, w))  # (E + cloud, r, w)
    Fc[E] = 0.0
    if clouds is not None:
        Fc[E] = _block_mean(clouds[0][rows], f)
        weight *= 1.0 - Fc[E]
        valid = _block_mean(clouds[1][rows].astype(np.float32), f) == 0
    np.multiply(F, weight, out=Fc[:E])
    if cfg.stripe_fraction > 0:
        valid &= ~_stripes(cfg, tg.sensor.name, tg.days[t], out_rows, w)
    C = tg.spectra.shape[1]
    pix = _buf(tg.scratch, "pix", (C, r * w))
    np.matmul(tg.spectra.T, Fc.reshape(E + 1, r * w), out=pix)
    pix = pix.reshape(C, r, w)
    amp = np.float32(cfg.noise_std * math.sqrt(12.0))  # uniform noise of std noise_std
    noise = _buf(tg.scratch, "noise", (r, w))
    for c in range(C):
        p = pix[c]
        if amp > 0:
            tg.rng.random(dtype=np.float32, out=noise)
            noise *= amp
            p += noise
            p -= amp / 2
        np.maximum(p, 0.0, out=p)
        if not cfg.keep_cloud_values:
            p *= valid
        tg.pixels[t, c, out_rows] = p
    tg.valid[t, out_rows] = valid


def _render_sar(cfg, g, tg, t, rows, F) -> None:
    """Rows ``rows`` of date ``t``: water-cloud model, heterogeneity, texture, noise floor,
    speckle, dB. One texture draw for all polarizations (the same scatterers)."""
    lab = g.labels[rows]
    vol = F[_GREEN] + F[_DRY] + F[_SHADE]
    tau2 = np.exp(-SAR_EXTINCTION * vol)  # two-way canopy transmissivity (water-cloud model)
    mod = 10.0 ** (0.1 * g.bright[rows])  # +-1 dB spatial heterogeneity (roughness, moisture)
    for k, name in enumerate(g.class_names):
        nu = LAND_COVERS[CLASS_NAMES.index(name)].texture_looks
        m = lab == k
        if nu > 0 and m.any():
            mod[m] *= tg.rng.gamma(nu, 1.0 / nu, int(m.sum())).astype(np.float32)
    out_rows = slice(rows.start // tg.factor, rows.stop // tg.factor)
    floor, L = np.float32(10.0 ** (cfg.sar_noise_floor_db / 10.0)), cfg.sar_looks
    sigma, volume = _buf(tg.scratch, "sigma", lab.shape), _buf(tg.scratch, "volume", lab.shape)
    for c in range(tg.pixels.shape[1]):
        np.take(tg.spectra[0, :, c], lab, out=sigma)  # ground term
        np.take(tg.spectra[1, :, c], lab, out=volume)
        sigma -= volume
        sigma *= tau2
        sigma += volume
        sigma *= mod
        s = _block_mean(sigma, tg.factor)
        s += floor
        speckle = _buf(tg.scratch, "speckle", s.shape)
        tg.rng.standard_gamma(L, dtype=np.float32, out=speckle)  # speckle, L looks, mean L
        s *= speckle
        p = tg.pixels[t, c, out_rows]
        np.log10(s, out=p)
        p *= 10.0
        p -= np.float32(10.0 * math.log10(L))
    tg.valid[t, out_rows] = True  # SAR sees through clouds


# ---------------------------------------------------------------------------- the scene


def _resolve_dates(cfg: SceneConfig) -> dict[str, list[int]]:
    if cfg.dates is None:
        jan1 = to_days(f"{cfg.year:04d}-01-01")
        doys = np.linspace(60, 300, cfg.num_dates) if cfg.num_dates > 1 else [180]
        days = [jan1 + int(round(d)) - 1 for d in doys]
        return {s: days for s in cfg.sensors}
    if isinstance(cfg.dates, Mapping):
        missing = [s for s in cfg.sensors if s not in cfg.dates]
        if missing:
            raise ValueError(f"dates: no dates given for sensors {missing}")
        return {s: sorted({to_days(d) for d in cfg.dates[s]}) for s in cfg.sensors}
    days = sorted({to_days(d) for d in cfg.dates})
    if not days:
        raise ValueError("dates: give at least one date")
    return {s: days for s in cfg.sensors}


def _make_target(cfg: SceneConfig, name: str, days: list[int], class_names) -> _Target:
    s = _sensors.get(name)
    f = 1
    if cfg.native_resolution and s.gsd_m > cfg.gsd_m:
        f = int(round(s.gsd_m / cfg.gsd_m))
        if cfg.size % f:
            raise ValueError(
                f"{name}: native_resolution needs size divisible by {f} "
                f"({s.gsd_m} m / {cfg.gsd_m} m), got {cfg.size}"
            )
    h = cfg.size // f
    pixels = np.zeros((len(days), len(s.bands), h, h), dtype=np.float32)  # (T, C, h, w)
    valid = np.zeros((len(days), h, h), dtype=bool)
    tg = _Target(s, f, days, pixels, valid, _rng(cfg.seed, "noise", name))
    if s.is_sar:
        tg.spectra = sar_tables(class_names, s)
    else:
        tg.spectra = band_spectra(s, (*ENDMEMBERS, "cloud"))  # (E + 1, C)
    return tg


def generate(cfg: SceneConfig) -> Scene:
    """Render the scene described by ``cfg`` (see :func:`make_scene`)."""
    t0, n = time.perf_counter(), cfg.size
    names = CLASS_NAMES[: cfg.num_classes]
    dates = _resolve_dates(cfg)
    labels = _class_map(cfg)
    rng = _rng(cfg.seed, "variability")
    g = _Ground(
        labels,
        _phenology_shift(cfg, labels),
        smooth_noise(rng, n, n, 2.0),
        smooth_noise(rng, n, n, 4.0),
        names,
    )
    targets = [_make_target(cfg, s, dates[s], names) for s in cfg.sensors]
    step = math.lcm(*(tg.factor for tg in targets))
    chunk = step * max(1, (1 << 18) // (n * step))  # ~1 MB per band plane
    for day in sorted({d for ds in dates.values() for d in ds}):
        doy = from_days(day).timetuple().tm_yday
        todo = [(tg, tg.days.index(day)) for tg in targets if day in tg.days]
        optical = any(not tg.sensor.is_sar for tg, _ in todo)
        clouds = _clouds(cfg, day) if optical and cfg.cloud_fraction > 0 else None
        for r0 in range(0, n, chunk):
            rows = slice(r0, min(n, r0 + chunk))
            F = _fractions(g, rows, doy)
            for tg, t in todo:
                if tg.sensor.is_sar:
                    _render_sar(cfg, g, tg, t, rows, F)
                else:
                    _render_optical(cfg, g, tg, t, rows, F, clouds)
    grid = Grid(cfg.crs, (cfg.gsd_m, 0.0, cfg.origin[0], 0.0, -cfg.gsd_m, cfg.origin[1]), n, n)
    mods = {tg.sensor.name: _modality(cfg, tg, grid) for tg in targets}
    dt = time.perf_counter() - t0
    log.info("synthetic scene %dx%d, %d classes, %s: %.2f s", n, n, len(names), list(mods), dt)
    return Scene(cfg, grid, labels, names, mods)


def _modality(cfg: SceneConfig, tg: _Target, grid: Grid) -> ModalityData:
    return ModalityData(
        pixels=torch.from_numpy(tg.pixels),
        valid=torch.from_numpy(tg.valid),
        dates=torch.tensor(tg.days, dtype=torch.int64),
        sensor=tg.sensor.name,
        bands=tg.sensor.band_names,
        grid=grid.scaled(tg.factor) if tg.factor > 1 else grid,
        meta={"synthetic": True, "seed": cfg.seed},
    )


def make_scene(
    size: int = 64,
    num_classes: int = 6,
    dates: Sequence | Mapping | None = None,
    sensors: Sequence[str] = ("sentinel2_l2a", "sentinel1_grd"),
    seed: int = 0,
    cloud_fraction: float = 0.1,
    gsd_m: float = 10.0,
    **options: object,
) -> Scene:
    """A synthetic scene: ``size x size`` pixels of ``gsd_m`` on a UTM grid, ``num_classes``
    land covers, one time series per sensor in physical units. ``options`` are further
    :class:`SceneConfig` fields (unknown names raise)."""
    cfg = SceneConfig(
        size=size,
        num_classes=num_classes,
        dates=dates,
        sensors=sensors,
        seed=seed,
        cloud_fraction=cloud_fraction,
        gsd_m=gsd_m,
        **options,
    )
    return generate(cfg)


# ---------------------------------------------------------------------------- files


def file_encoding(sensor: str | _sensors.Sensor) -> tuple[np.dtype, float]:
    """The (dtype, nodata) a sensor's synthetic files use: the registry nodata where it
    has one; NaN for float data (SAR); 0 for unsigned integer files without one."""
    s = _sensors.get(sensor)
    if s.is_sar or (s.scale >= 0.01 and abs(s.scale - 1 / 255) > 1e-9):
        return np.dtype(np.float32), (float("nan") if s.nodata is None else float(s.nodata))
    if abs(s.scale - 1 / 255) < 1e-9:
        return np.dtype(np.uint8), (0.0 if s.nodata is None else float(s.nodata))
    if s.nodata is not None and s.nodata < 0:
        return np.dtype(np.int16), float(s.nodata)
    return np.dtype(np.uint16), (0.0 if s.nodata is None else float(s.nodata))


def encode(pixels: np.ndarray, valid: np.ndarray, sensor: str | _sensors.Sensor) -> np.ndarray:
    """Physical ``[C, H, W]`` -> file values; nodata where not ``valid`` and never on a
    valid pixel (a valid raw value equal to nodata is nudged by one count)."""
    s = _sensors.get(sensor)
    dtype, nodata = file_encoding(s)
    out = np.empty(pixels.shape, dtype=dtype)
    for c in range(pixels.shape[0]):  # band by band: bounded float64 temporaries
        raw = s.from_physical(pixels[c], dtype=dtype)
        if dtype.kind in "iu":
            raw[(raw == nodata) & valid] += 1 if nodata < np.iinfo(dtype).max else -1
        raw[~valid] = nodata
        out[c] = raw
    return out


def _grid_dict(grid: Grid) -> dict:
    return dict(crs=grid.crs, transform=list(grid.transform), height=grid.height, width=grid.width)


def _write_sensor(out: Path, md: ModalityData, tags: dict, **kw) -> dict:
    """One file per date of one sensor; returns its manifest entry (relative paths)."""
    dtype, nodata = file_encoding(md.sensor)
    (out / md.sensor).mkdir(exist_ok=True)
    files, isos = [], []
    for t, day in enumerate(md.dates.tolist()):
        iso = from_days(day).isoformat()
        files.append(f"{md.sensor}/{iso}.tif")
        isos.append(iso)
        raw = encode(md.pixels[t].numpy(), md.valid[t].numpy(), md.sensor)
        tags_t = {**tags, "RSFM_DATE": iso, "RSFM_SENSOR": md.sensor}
        write_geotiff(out / files[-1], raw, md.grid, nodata=nodata, band_descriptions=md.bands,
                      tags=tags_t, **kw)  # fmt: skip
    return {
        "files": files,
        "dates": isos,
        "bands": list(md.bands),
        "dtype": dtype.name,
        "nodata": "nan" if math.isnan(nodata) else nodata,  # JSON has no NaN
        "grid": _grid_dict(md.grid),
        "valid_fraction": round(float(md.valid.float().mean()), 4),
    }


def write_scene(
    scene: Scene, out_dir: str | Path, cog: bool = False, compress: str = "deflate"
) -> dict:
    """Write one GeoTIFF per sensor per date (``<sensor>/<YYYY-MM-DD>.tif``: raw file
    values, tags ``RSFM_DATE``/``RSFM_SENSOR``, band descriptions = band names, the
    sensor's nodata at invalid pixels), ``labels.tif`` (uint8 class ids) and
    ``manifest.json``. Returns the manifest with absolute paths (stored relative)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = scene.config
    tags = {"RSFM_SYNTHETIC": 1, "RSFM_SEED": cfg.seed}
    write_geotiff(out / "labels.tif", scene.labels, scene.grid, nodata=255,
                  band_descriptions=["class_id"], cog=cog, compress=compress,
                  tags={**tags, "RSFM_CLASSES": json.dumps(list(scene.class_names))})  # fmt: skip
    days = {d for md in scene.modalities.values() for d in md.dates.tolist()}
    manifest = {
        "format": "rsfm-synthetic-scene/1",
        "seed": cfg.seed,
        "grid": _grid_dict(scene.grid),
        "classes": list(scene.class_names),
        "labels": "labels.tif",
        "dates": [from_days(d).isoformat() for d in sorted(days)],
        "sensors": {
            name: _write_sensor(out, md, tags, cog=cog, compress=compress)
            for name, md in scene.modalities.items()
        },
        "config": {k: v for k, v in asdict(cfg).items() if k != "dates"},
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
    log.info("wrote synthetic scene to %s", out)
    return load_manifest(out)


def load_manifest(path: str | Path) -> dict:
    """Read ``manifest.json`` (or its folder), with file paths made absolute, so that
    ``read_modality(m["sensors"][s]["files"], s, m["sensors"][s]["dates"])`` works."""
    p = Path(path)
    p = p / "manifest.json" if p.is_dir() else p
    m = json.loads(p.read_text())
    m["labels"] = str(p.parent / m["labels"])
    for entry in m["sensors"].values():
        entry["files"] = [str(p.parent / f) for f in entry["files"]]
        if entry["nodata"] == "nan":
            entry["nodata"] = float("nan")
    return m
