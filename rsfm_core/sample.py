"""The data model: one modality of one place (or a batch of places).

``ModalityData`` holds, for one sensor:
- ``pixels``  float32 ``[T, C, H, W]`` (or ``[B, T, C, H, W]``) in physical units
  (reflectance 0..1, backscatter in dB, ...) — never pre-normalised;
- ``valid``   bool ``[T, H, W]`` (or ``[B, T, H, W]``): False where nodata, NaN, cloud or
  a missing frame; invalid pixels hold 0.0 in ``pixels``;
- ``dates``   int64 ``[T]`` (or ``[B, T]``): days since 1970-01-01;
- ``sensor``  registry name (``rsfm_core.sensors.get``) and ``bands``, the band names in
  the order of the C axis;
- ``grid``    the ground grid (CRS, affine transform, shape), or ``None`` for arrays that
  carry no georeferencing (e.g. reBEN patches).

Modalities of one sample share one ground grid; each may have its own pixel size.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

EPOCH = _dt.date(1970, 1, 1)


def to_days(d: _dt.date | _dt.datetime | str | int) -> int:
    """A date as days since 1970-01-01. Accepts date/datetime, ISO strings, or int days."""
    if isinstance(d, bool):
        raise TypeError(f"date must be a date, ISO string or int days, got bool {d!r}")
    if isinstance(d, int):
        return d
    if isinstance(d, _dt.datetime):
        d = d.date()
    if isinstance(d, str):
        s = d.strip()
        try:
            d = _dt.date.fromisoformat(s[:10]) if len(s) >= 10 else _dt.date.fromisoformat(s)
        except ValueError:
            try:
                d = _dt.datetime.strptime(s[:8], "%Y%m%d").date()
            except ValueError:
                raise ValueError(
                    f"cannot parse date {d!r}: use ISO 'YYYY-MM-DD' (or 'YYYYMMDD')"
                ) from None
    if not isinstance(d, _dt.date):
        raise TypeError(f"date must be a date, ISO string or int days, got {type(d).__name__}")
    return (d - EPOCH).days


def from_days(days: int) -> _dt.date:
    return EPOCH + _dt.timedelta(days=int(days))


@dataclass(frozen=True)
class Grid:
    """A ground grid: CRS (WKT or 'EPSG:n'), GDAL-order affine ``(a, b, c, d, e, f)``,
    i.e. ``x = a*col + b*row + c``, ``y = d*col + e*row + f``, and the pixel shape."""

    crs: str | None
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int

    @property
    def res(self) -> tuple[float, float]:
        a, b, _, d, e, _ = self.transform
        return (float((a * a + d * d) ** 0.5), float((b * b + e * e) ** 0.5))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) for north-up grids."""
        a, _, c, _, e, f = self.transform
        xs = (c, c + a * self.width)
        ys = (f, f + e * self.height)
        return (min(xs), min(ys), max(xs), max(ys))

    def window(self, row: int, col: int, height: int, width: int) -> Grid:
        """The grid of a window whose top-left pixel is (row, col)."""
        a, b, c, d, e, f = self.transform
        return Grid(
            self.crs,
            (a, b, c + a * col + b * row, d, e, f + d * col + e * row),
            height,
            width,
        )

    def scaled(self, factor: float) -> Grid:
        """The same area with pixels ``factor`` times larger (e.g. the token grid)."""
        a, b, c, d, e, f = self.transform
        return Grid(
            self.crs,
            (a * factor, b * factor, c, d * factor, e * factor, f),
            int(round(self.height / factor)),
            int(round(self.width / factor)),
        )


@dataclass
class ModalityData:
    pixels: torch.Tensor
    valid: torch.Tensor
    dates: torch.Tensor
    sensor: str
    bands: tuple[str, ...]
    grid: Grid | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bands = tuple(self.bands)
        p, v, d = self.pixels, self.valid, self.dates
        if p.dim() not in (4, 5):
            raise ValueError(
                f"{self.sensor}: pixels must be [T, C, H, W] or [B, T, C, H, W], got {tuple(p.shape)}"
            )
        lead = p.shape[:-3]  # (T,) or (B, T)
        if tuple(v.shape) != (*lead, *p.shape[-2:]):
            raise ValueError(
                f"{self.sensor}: valid must be {(*lead, *p.shape[-2:])} to match pixels "
                f"{tuple(p.shape)}, got {tuple(v.shape)}"
            )
        if tuple(d.shape) != tuple(lead):
            raise ValueError(f"{self.sensor}: dates must be {tuple(lead)}, got {tuple(d.shape)}")
        if p.shape[-3] != len(self.bands):
            raise ValueError(
                f"{self.sensor}: pixels have {p.shape[-3]} bands but {len(self.bands)} band names "
                f"were given ({', '.join(self.bands)})"
            )
        if v.dtype != torch.bool:
            self.valid = v.to(torch.bool)
        if d.dtype != torch.int64:
            self.dates = d.to(torch.int64)

    @classmethod
    def from_numpy(
        cls,
        pixels,
        sensor,
        dates: Sequence,
        bands: Sequence[str] | None = None,
        valid=None,
        *,
        raw: bool = False,
        transform: Sequence[float] | None = None,
        crs: str | None = None,
    ) -> ModalityData:
        """An unbatched modality from in-memory arrays (a .mat cube, a numpy time series):

        - ``pixels`` ``[T, C, H, W]`` (or ``[C, H, W]`` for one date), physical units (reflectance 0..1, SAR in dB) unless
          ``raw=True`` (file values: the sensor's scale/offset, and dB for linear SAR,
          are applied);
        - ``sensor``: a registry name or a :class:`rsfm_core.sensors.Sensor` (registered
          here if its name is new: the model looks sensors up by name);
        - ``dates``: one per time step (ISO strings, dates or days since 1970);
        - ``bands``: names of the C channels in array order (default: all the sensor's
          bands, in its order); a subset of the sensor's bands is fine. Channels are
          put in the sensor's order;
        - ``valid`` ``[T, H, W]`` bool (default: pixels whose bands are all finite);
          invalid pixels are set to 0;
        - ``transform``: rasterio's affine ``(a, b, c, d, e, f)`` (``x = a*col + b*row +
          c``, ``y = d*col + e*row + f``; GDAL's GetGeoTransform lists them as ``(c, a,
          b, f, d, e)``) and ``crs`` (e.g. "EPSG:32632"): the ground grid; without them
          ``grid`` is None and outputs are not georeferenced."""
        import numpy as np

        from . import sensors as _sensors

        if isinstance(sensor, _sensors.Sensor):
            if sensor.name not in _sensors.names():
                _sensors.register(sensor)
            elif _sensors.get(sensor.name) != sensor:
                raise ValueError(
                    f"from_numpy: another sensor is registered as {sensor.name!r}; give yours "
                    "a new name (or register it with overwrite=True)"
                )
        sen = _sensors.get(sensor)
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ValueError(
                f"from_numpy: pixels must be [T, C, H, W] or [C, H, W], got shape {x.shape}"
            )
        names = list(sen.band_names) if bands is None else [sen.resolve(b) for b in bands]
        if len(names) != x.shape[1]:
            raise ValueError(
                f"from_numpy: pixels have {x.shape[1]} channels but {len(names)} band names "
                f"({', '.join(names)}); give bands= in the array's channel order"
            )
        order = sorted(range(len(names)), key=lambda i: sen.indices([names[i]])[0])
        x = x[:, order]
        names = [names[i] for i in order]
        x = sen.to_physical(x) if raw else x.astype(np.float32)
        ok = np.isfinite(x).all(axis=1)  # [T, H, W]
        if valid is not None:
            v = np.asarray(valid, dtype=bool)
            v = v[None] if v.ndim == 2 else v
            if v.shape != ok.shape:
                raise ValueError(f"from_numpy: valid must be {ok.shape} ([T, H, W]), got {v.shape}")
            ok &= v
        x = np.where(ok[:, None], x, np.float32(0.0))
        if len(dates) != x.shape[0]:
            raise ValueError(
                f"from_numpy: {x.shape[0]} time steps but {len(dates)} dates; give one date each"
            )
        days = torch.tensor([to_days(d) for d in dates], dtype=torch.int64)
        grid = None
        if transform is not None:
            t = tuple(float(v) for v in tuple(transform)[:6])
            if len(t) != 6:
                raise ValueError(f"from_numpy: transform needs 6 coefficients, got {transform!r}")
            grid = Grid(crs, t, int(x.shape[2]), int(x.shape[3]))
        return cls(torch.from_numpy(x), torch.from_numpy(ok), days, sen.name, tuple(names), grid)

    @property
    def batched(self) -> bool:
        return self.pixels.dim() == 5

    @property
    def num_dates(self) -> int:
        return self.pixels.shape[-4]

    @property
    def shape_hw(self) -> tuple[int, int]:
        return (int(self.pixels.shape[-2]), int(self.pixels.shape[-1]))

    def to(self, device: torch.device | str) -> ModalityData:
        return replace(
            self,
            pixels=self.pixels.to(device),
            valid=self.valid.to(device),
            dates=self.dates.to(device),
        )

    def unsqueeze(self) -> ModalityData:
        """Add a batch axis of size 1 to an unbatched sample."""
        if self.batched:
            return self
        return replace(
            self, pixels=self.pixels[None], valid=self.valid[None], dates=self.dates[None]
        )

    def crop(self, row: int, col: int, height: int, width: int) -> ModalityData:
        """A spatial window (pixel coordinates of this modality)."""
        sl = (..., slice(row, row + height), slice(col, col + width))
        return replace(
            self,
            pixels=self.pixels[sl],
            valid=self.valid[sl],
            grid=self.grid.window(row, col, height, width) if self.grid is not None else None,
        )

    def select_dates(self, idx: Sequence[int] | torch.Tensor) -> ModalityData:
        idx = torch.as_tensor(idx, dtype=torch.long)
        ax = 1 if self.batched else 0
        return replace(
            self,
            pixels=self.pixels.index_select(ax, idx),
            valid=self.valid.index_select(ax, idx),
            dates=self.dates.index_select(ax, idx),
        )


def collate(samples: Sequence[ModalityData]) -> ModalityData:
    """Stack unbatched samples of one modality into a batch (same sensor, bands, T, H, W)."""
    if not samples:
        raise ValueError("collate: no samples")
    first = samples[0]
    for i, s in enumerate(samples):
        if s.batched:
            raise ValueError(f"collate: sample {i} is already batched")
        if s.sensor != first.sensor or s.bands != first.bands:
            raise ValueError(
                f"collate: sample {i} is {s.sensor} {s.bands}, sample 0 is {first.sensor} {first.bands}"
            )
        if s.pixels.shape != first.pixels.shape:
            raise ValueError(
                f"collate: sample {i} has shape {tuple(s.pixels.shape)}, sample 0 {tuple(first.pixels.shape)}"
            )
    return ModalityData(
        pixels=torch.stack([s.pixels for s in samples]),
        valid=torch.stack([s.valid for s in samples]),
        dates=torch.stack([s.dates for s in samples]),
        sensor=first.sensor,
        bands=first.bands,
        grid=None,
    )
