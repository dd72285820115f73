"""Land-cover physics for synthetic scenes: endmember spectra, classes, phenology, SAR.

- **Spectra**: endmember reflectances (green vegetation, dry vegetation, soil, water,
  impervious, snow, shade, plus cloud) as smooth functions of wavelength on a 1-nm grid
  over 350-2600 nm: rounded typical values at anchor wavelengths (sources in
  docs/synthetic.md), linearly interpolated, then smoothed with a Gaussian (sigma 8 nm).
- **Bands**: a band's value is the spectrum integrated over a Gaussian spectral response
  with the band's ``fwhm_nm`` around ``center_nm``; so Sentinel-2, Landsat and EnMAP views
  of one surface agree at shared wavelengths.
- **Classes**: each land cover is a linear mixture of endmembers whose fractions follow a
  day-of-year phenology (northern mid-latitudes), and has a C-band (VV, VH) backscatter
  of its ground and of a dense vegetation volume, combined by the water-cloud model
  (Attema & Ulaby 1978) in :mod:`rsfm_core.synthetic.scene`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import sensors as _sensors

# ---------------------------------------------------------------------------- spectra

WAVELENGTHS_NM = np.arange(350.0, 2601.0, 1.0)  # 1-nm grid of every spectrum

# (wavelength nm, reflectance) anchors, rounded typical values (see docs/synthetic.md):
# linear interpolation on the 1-nm grid, then Gaussian smoothing (sigma 8 nm).
_ANCHORS: dict[str, tuple[tuple[float, float], ...]] = {
    # Dense green canopy: chlorophyll troughs (blue, red), green peak, red edge 700-750,
    # NIR plateau ~0.47, liquid-water dips at 970/1200/1450/1940 nm.
    "green_vegetation": (
        (350, .03), (400, .03), (450, .035), (500, .045), (530, .075), (550, .085),
        (570, .075), (600, .05), (640, .035), (670, .03), (685, .035), (700, .08),
        (715, .17), (730, .28), (750, .40), (770, .45), (800, .47), (900, .48), (950, .46),
        (970, .44), (1000, .46), (1070, .47), (1150, .42), (1200, .38), (1250, .40),
        (1280, .40), (1350, .32), (1400, .20), (1450, .13), (1500, .18), (1550, .24),
        (1650, .27), (1700, .26), (1800, .23), (1850, .17), (1900, .07), (1950, .04),
        (2000, .06), (2100, .11), (2200, .13), (2250, .12), (2300, .10), (2400, .07),
        (2500, .05), (2600, .04),
    ),
    # Senescent vegetation / straw / bark: no red trough, cellulose-lignin dip ~2100 nm.
    "dry_vegetation": (
        (350, .05), (400, .06), (450, .08), (500, .11), (550, .15), (600, .19), (650, .22),
        (700, .26), (750, .29), (800, .31), (900, .34), (1000, .36), (1100, .39),
        (1200, .40), (1300, .42), (1400, .38), (1450, .35), (1500, .38), (1600, .44),
        (1700, .45), (1800, .44), (1900, .35), (1950, .32), (2000, .35), (2050, .36),
        (2100, .32), (2150, .35), (2200, .36), (2250, .35), (2300, .32), (2350, .31),
        (2400, .29), (2500, .26), (2600, .24),
    ),
    # Loamy soil: rises with wavelength, shallow water dips 1400/1900, clay Al-OH at 2200.
    "soil": (
        (350, .05), (400, .06), (450, .08), (500, .10), (550, .13), (600, .16), (650, .19),
        (700, .21), (800, .24), (900, .26), (1000, .28), (1200, .31), (1350, .33),
        (1400, .31), (1450, .30), (1500, .32), (1600, .34), (1700, .35), (1800, .35),
        (1900, .31), (1950, .30), (2000, .32), (2100, .33), (2160, .32), (2200, .29),
        (2250, .31), (2300, .30), (2400, .28), (2500, .26), (2600, .25),
    ),
    # Moderately clear inland water: green maximum, ~0 beyond 900 nm.
    "water": (
        (350, .045), (400, .05), (450, .05), (500, .052), (550, .055), (580, .05),
        (600, .035), (650, .022), (700, .013), (750, .008), (800, .006), (900, .004),
        (1000, .003), (1200, .002), (2600, .002),
    ),
    # Urban impervious mix (concrete, asphalt, roofs): dull, slowly rising.
    "impervious": (
        (350, .07), (400, .08), (450, .09), (500, .10), (550, .11), (600, .13), (650, .14),
        (700, .15), (800, .16), (900, .17), (1000, .18), (1200, .20), (1400, .20),
        (1600, .22), (1800, .22), (1900, .21), (2000, .21), (2200, .20), (2300, .19),
        (2400, .18), (2600, .17),
    ),
    # Snow: bright visible, ice absorption at 1030/1260 nm, near-black SWIR.
    "snow": (
        (350, .94), (400, .96), (500, .97), (600, .96), (700, .93), (800, .88), (900, .80),
        (950, .73), (1030, .58), (1100, .63), (1150, .55), (1260, .40), (1300, .42),
        (1400, .15), (1500, .05), (1600, .06), (1700, .08), (1800, .09), (1900, .02),
        (2000, .01), (2100, .03), (2200, .05), (2300, .04), (2400, .02), (2500, .01),
        (2600, .01),
    ),
    "shade": ((350, 0.0), (2600, 0.0)),  # photometric shade (spectral mixture analysis)
    # Optically thick water cloud: bright and flat, still bright in SWIR (unlike snow).
    "cloud": (
        (350, .70), (500, .75), (700, .75), (900, .73), (1000, .70), (1200, .65),
        (1400, .50), (1600, .55), (1800, .50), (1950, .30), (2200, .40), (2600, .30),
    ),
}  # fmt: skip
ENDMEMBERS = ("green_vegetation", "dry_vegetation", "soil", "water", "impervious", "snow", "shade")
_E = {name: i for i, name in enumerate(ENDMEMBERS)}


def spectrum(name: str) -> np.ndarray:
    """Reflectance of an endmember (or ``"cloud"``) on :data:`WAVELENGTHS_NM`."""
    if name not in _ANCHORS:
        raise ValueError(f"unknown spectrum {name!r}; known: {', '.join(_ANCHORS)}")
    lam, r = np.asarray(_ANCHORS[name], dtype=np.float64).T
    y = np.interp(WAVELENGTHS_NM, lam, r)
    k = np.exp(-0.5 * (np.arange(-32, 33) / 8.0) ** 2)
    return np.convolve(np.pad(y, 32, mode="edge"), k / k.sum(), mode="valid")


def spectral_response(sensor: str | _sensors.Sensor) -> np.ndarray:
    """``[C, len(WAVELENGTHS_NM)]`` Gaussian responses (``fwhm_nm``) normalised to sum 1."""
    s = _sensors.get(sensor)
    if s.is_sar:
        raise ValueError(f"{s.name} is a SAR sensor: it has no spectral response")
    rows = []
    for b in s.bands:
        sigma = (b.fwhm_nm or 10.0) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        lo, hi = b.center_nm - 2 * sigma, b.center_nm + 2 * sigma
        if lo < WAVELENGTHS_NM[0] or hi > WAVELENGTHS_NM[-1]:
            raise ValueError(
                f"{s.name} band {b.name} ({b.center_nm} nm, fwhm {b.fwhm_nm} nm) lies outside "
                f"the synthetic spectra ({WAVELENGTHS_NM[0]:.0f}-{WAVELENGTHS_NM[-1]:.0f} nm)"
            )
        w = np.exp(-0.5 * ((WAVELENGTHS_NM - b.center_nm) / sigma) ** 2)
        rows.append(w / w.sum())
    return np.stack(rows)


def band_spectra(sensor: str | _sensors.Sensor, names: Sequence[str] = ENDMEMBERS) -> np.ndarray:
    """``[len(names), C]``: each spectrum integrated over the sensor's bands."""
    srf = spectral_response(sensor)
    return np.stack([srf @ spectrum(n) for n in names]).astype(np.float32)


# ---------------------------------------------------------------------------- land cover


@dataclass(frozen=True)
class LandCover:
    name: str
    share: float  # default target area share (renormalised over the K classes in use)
    sar_ground_db: tuple[float, float]  # (co-pol VV, cross-pol VH) of the surface term
    sar_volume_db: tuple[float, float]  # (VV, VH) of a dense vegetation volume
    texture_looks: float = 0.0  # > 0: gamma texture (K-distributed clutter), urban


# Order matters: K classes are the first K. C-band, incidence ~30-45 deg (docs/synthetic.md).
LAND_COVERS = (
    LandCover("water", 0.08, (-24.0, -30.0), (-24.0, -30.0)),
    LandCover("broadleaf_forest", 0.20, (-12.0, -20.0), (-7.5, -13.5)),
    LandCover("cropland", 0.28, (-12.0, -20.0), (-10.0, -15.5)),
    LandCover("grassland", 0.15, (-12.0, -20.0), (-11.0, -17.0)),
    LandCover("bare_soil", 0.07, (-12.0, -19.5), (-11.0, -17.0)),
    LandCover("urban", 0.10, (1.0, -11.0), (1.0, -11.0), texture_looks=2.0),
    LandCover("wetland", 0.04, (-24.0, -30.0), (-9.0, -16.0)),
    LandCover("conifer_forest", 0.10, (-12.0, -20.0), (-7.0, -12.5)),
    LandCover("snow_ice", 0.03, (-14.0, -22.0), (-14.0, -22.0)),
)
CLASS_NAMES = tuple(c.name for c in LAND_COVERS)
SAR_EXTINCTION = 3.0  # two-way canopy attenuation per unit vegetation fraction


def _sig(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _season(d: np.ndarray, start: float, k_start: float, end: float, k_end: float) -> np.ndarray:
    """0 outside, 1 inside [start, end] (day of year), logistic edges of width k."""
    return _sig((d - start) / k_start) * _sig((end - d) / k_end)


def cover_fractions(name: str, doy: np.ndarray) -> np.ndarray:
    """``[len(ENDMEMBERS), n]`` cover fractions of class ``name`` at day(s) of year ``doy``
    (northern mid-latitudes); the remainder to 1 is soil."""
    d = np.atleast_1d(np.asarray(doy, dtype=np.float32))
    if name == "water":
        f = {"water": 1.0}
    elif name == "broadleaf_forest":  # deciduous: leaf-out ~day 120, leaf fall ~day 295
        leaf = _season(d, 120, 8, 295, 10)
        f = {"green_vegetation": 0.35 + 0.48 * leaf, "dry_vegetation": 0.30 - 0.28 * leaf}
        f["shade"] = 0.30 - 0.18 * leaf  # leafless crowns: bark and deep shadow
    elif name == "cropland":  # winter cereal: green-up, ripening, harvest ~day 212, stubble
        ripe = _season(d, 180, 6, 212, 3)
        f = {"green_vegetation": 0.04 + 0.84 * _season(d, 115, 9, 190, 6)}
        f["dry_vegetation"] = 0.55 * ripe + 0.12 * _sig((d - 212) / 3)
    elif name == "grassland":
        leaf = _season(d, 95, 12, 250, 20)
        f = {"green_vegetation": 0.35 + 0.45 * leaf, "dry_vegetation": 0.50 - 0.45 * leaf}
    elif name == "bare_soil":
        f = {"green_vegetation": 0.03, "dry_vegetation": 0.04}
    elif name == "urban":  # impervious, building shadow, street trees
        leaf = _season(d, 120, 8, 295, 10)
        f = {"impervious": 0.78, "shade": 0.06, "green_vegetation": 0.06 + 0.06 * leaf}
        f["dry_vegetation"] = 0.10 - 0.06 * leaf
    elif name == "wetland":  # reed marsh over open water
        leaf = _season(d, 130, 10, 270, 12)
        f = {"water": 0.35 - 0.2 * leaf, "green_vegetation": 0.15 + 0.45 * leaf}
        f["dry_vegetation"] = 0.5 - 0.25 * leaf
    elif name == "conifer_forest":  # evergreen needleleaf: dark, nearly constant
        leaf = _season(d, 120, 15, 290, 15)
        f = {"green_vegetation": 0.60 + 0.05 * leaf, "dry_vegetation": 0.05}
        f["shade"] = 0.35 - 0.05 * leaf  # clumped, shadowed crowns
    elif name == "snow_ice":  # firn/glacier; summer melt exposes darker debris-covered ice
        melt = _season(d, 170, 10, 250, 10)
        f = {"snow": 0.92 - 0.25 * melt, "shade": 0.05}
    else:
        raise ValueError(f"unknown land cover {name!r}; known: {', '.join(CLASS_NAMES)}")
    out = np.zeros((len(ENDMEMBERS), d.size), dtype=np.float32)
    for k, v in f.items():
        out[_E[k]] = v
    out[_E["soil"]] = np.clip(1.0 - out.sum(0), 0.0, 1.0)
    return out


def sar_tables(class_names: Sequence[str], sensor: _sensors.Sensor) -> np.ndarray:
    """``(2, K, C)`` linear sigma0 of the ground and volume terms per class and band."""
    pol = [0 if b.polarization in ("VV", "HH") else 1 for b in sensor.bands]
    covers = [LAND_COVERS[CLASS_NAMES.index(n)] for n in class_names]
    db = np.array(
        [
            [[c.sar_ground_db[p] for p in pol] for c in covers],
            [[c.sar_volume_db[p] for p in pol] for c in covers],
        ]
    )
    return (10.0 ** (db / 10.0)).astype(np.float32)
