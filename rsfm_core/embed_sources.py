"""What the embedder reads: raster inputs (and manifests / STAC items that name them),
their match to the checkpoint's modalities, the token-aligned layout of a run, and the
sources that hand out tiles (files, or in-memory tensors).

Decisions:
- The **reference grid** is the finest file grid over all modalities (as in
  :func:`rsfm_core.io.read_sample`); the **token** is ``patch`` reference pixels of the
  modality that owns that grid. Every other modality is read on the grid whose pixel is
  ``token / its patch``: native when the sensor's pixel already fits (S1/S2 at 10 m with
  patch 4, EnMAP at 30 m with its own patch), else resampled by the io policy (logged).
- Reads are one window per batch of tiles along a tile row, snapped outward to the
  reference file's internal blocks (when those are whole tokens), then cut into tiles:
  GDAL decodes each block once per read and never for a sliver.
- All inputs are checked before the first tile (a one-token read of every modality), so
  bad files fail fast with the io layer's message naming the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import sensors
from .data import Grid, ModalityData
from .io import RasterError, open_info, read_modality
from .tiling import Tile, same_crs, tiles

log = logging.getLogger(__name__)


class MissingInputWarning(UserWarning):
    """A checkpoint modality or band the inputs do not provide (the model embeds without)."""


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RasterInput:
    """One modality's GeoTIFFs: ``paths`` has one entry per date, each a file or a list of
    band-group files; ``dates`` one per entry (None: from the files' tags); ``bands``
    names the file bands as in :func:`rsfm_core.io.read_modality` (None: descriptions or
    the sensor's order). ``nodata``, ``cloud_masks``, ``resampling`` go to the reader."""

    sensor: str
    paths: Sequence
    dates: Sequence | None = None
    bands: Sequence | None = None
    nodata: float | None = None
    cloud_masks: object = None
    resampling: str | None = None

    @staticmethod
    def from_stac(items: Sequence, sensor: str) -> RasterInput:
        """One date per STAC item (a path to its JSON, or the dict): the item's assets
        whose ``eo:bands``/``bands`` names (or asset keys) are bands of ``sensor`` become
        that date's band-group files; the date is ``properties.datetime`` (or
        ``start_datetime``). Every item must give the same assets."""
        sens = sensors.get(sensor)
        paths, dates, bands = [], [], None
        for item in items:
            files, names, date = _stac_item(item, sens)
            if bands is not None and names != bands:
                raise RasterError(
                    f"{files[0]}: STAC items give different bands ({names} vs {bands})"
                )
            paths.append(files)
            dates.append(date)
            bands = names
        if not paths:
            raise RasterError(f"from_stac: no items given for sensor {sensor!r}")
        return RasterInput(sensor, paths, dates, bands)


def _stac_item(item, sens: sensors.Sensor) -> tuple[list[str], list[list[str]], str]:
    base = Path(".")
    if isinstance(item, (str, os.PathLike)):
        base = Path(item).parent
        try:
            item = json.loads(Path(item).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise RasterError(f"{item}: not a readable STAC item JSON ({e})") from None
    props = item.get("properties", {})
    date = props.get("datetime") or props.get("start_datetime")
    if not date:
        raise RasterError(f"STAC item {item.get('id')!r}: no properties.datetime; add one")
    files, names = [], []
    for key, asset in sorted(item.get("assets", {}).items()):
        entries = asset.get("eo:bands") or asset.get("bands") or [{"name": key}]
        try:
            got = [sens.resolve(e.get("name") or e.get("common_name", "")) for e in entries]
        except sensors.SensorError:
            continue  # thumbnails, metadata, QA layers: not bands of this sensor
        href = asset["href"]
        files.append(href if "://" in href or os.path.isabs(href) else str(base / href))
        names.append(got)
    if not files:
        raise RasterError(f"STAC item {item.get('id')!r}: no asset names a band of {sens.name}")
    return files, names, str(date)


def _resolve_paths(entry: dict, base: Path) -> dict:
    fix = lambda p: p if "://" in str(p) or os.path.isabs(p) else str(base / p)  # noqa: E731
    paths = entry.get("paths") or entry.get("files")
    if paths is None:
        raise RasterError(f"manifest entry {entry}: needs 'paths' (one entry per date) or 'stac'")
    entry["paths"] = [fix(p) if isinstance(p, str) else [fix(q) for q in p] for p in paths]
    return entry


def load_manifest(path: str | os.PathLike) -> tuple[dict[str, RasterInput], dict]:
    """Inputs from a YAML/JSON manifest: ``{"inputs": {name: {sensor, paths, dates,
    bands, nodata} or {sensor, stac: [items]}}, "options": {...}, "checkpoint": ...}``,
    or the ``manifest.json`` written by ``rsfm synth``. Relative paths are relative to the
    manifest. Returns (inputs, the rest of the manifest)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except OSError as e:
        raise RasterError(f"{p}: cannot read the manifest ({e})") from None
    except ValueError as e:
        raise RasterError(f"{p}: not valid {p.suffix.lstrip('.').upper()} ({e})") from None
    if not isinstance(doc, dict):
        raise RasterError(f"{p}: a manifest is a mapping with an 'inputs' key")
    if "sensors" in doc and "inputs" not in doc:  # rsfm synth's manifest.json
        doc = {"inputs": {n: {"sensor": n, **e} for n, e in doc["sensors"].items()}}
    inputs = {}
    for name, e in (doc.get("inputs") or {}).items():
        e = dict(e)
        if "stac" in e:
            items = [i if os.path.isabs(i) else str(p.parent / i) for i in e["stac"]]
            inputs[name] = RasterInput.from_stac(items, e["sensor"])
            continue
        e = _resolve_paths(e, p.parent)
        keep = {k: e[k] for k in ("sensor", "paths", "dates", "bands", "nodata") if k in e}
        if isinstance(keep.get("nodata"), str):
            keep["nodata"] = float(keep["nodata"])  # "nan" (JSON has no NaN literal)
        if "sensor" not in keep:
            raise RasterError(f"{p}: input {name!r} needs a 'sensor' (a registry name)")
        inputs[name] = RasterInput(**keep)
    if not inputs:
        raise RasterError(f"{p}: no inputs; give inputs: {{name: {{sensor, paths, dates}}}}")
    return inputs, {k: v for k, v in doc.items() if k != "inputs"}


# ---------------------------------------------------------------------------- matching


def match_modalities(config, inputs: Mapping[str, RasterInput]) -> dict[str, RasterInput]:
    """Inputs keyed by the checkpoint's modality names: a key that is not a modality is
    accepted when exactly one modality declares that sensor (``sentinel2_l2a`` -> ``s2``)."""
    out = {}
    for key, inp in inputs.items():
        if not isinstance(inp, RasterInput):
            raise TypeError(f"inputs[{key!r}] must be a RasterInput, got {type(inp).__name__}")
        name = key
        if key not in config.modalities:
            hits = [n for n, m in config.modalities.items() if m.sensor in (key, inp.sensor)]
            if len(hits) != 1:
                raise RasterError(
                    f"input {key!r} ({_first(inp)}): not a modality of this checkpoint; "
                    f"use one of {list(config.modalities)}"
                )
            name = hits[0]
            log.info("input %r feeds the checkpoint's modality %r", key, name)
        if name in out:
            raise RasterError(f"two inputs feed modality {name!r}; give one per modality")
        out[name] = inp
    if not out:
        raise RasterError(f"no inputs given; this checkpoint takes {list(config.modalities)}")
    return {n: out[n] for n in config.modalities if n in out}  # config order, not dict order


def _first(inp: RasterInput) -> str:
    p = inp.paths
    while isinstance(p, (list, tuple)) and p:
        p = p[0]
    return str(p)


def missing_report(config, given: Mapping[str, ModalityData]) -> list[str]:
    """Warnings for the checkpoint's modalities and bands the inputs lack."""
    notes = []
    absent = [f"{n} ({m.sensor})" for n, m in config.modalities.items() if n not in given]
    if absent:
        notes.append(
            f"modalities not given: {', '.join(absent)}; embedding with "
            f"{', '.join(given)} only (the model accepts missing modalities)"
        )
    for n, d in given.items():
        declared = config.sensor(config.modalities[n].sensor)
        lacking = [b for b in declared.band_names if b not in d.bands]
        if lacking and len(lacking) < len(declared.band_names):
            notes.append(
                f"{n}: bands {', '.join(lacking)} of {declared.name} are missing from the "
                f"input; embedding with its {len(d.bands)} bands ({', '.join(d.bands)})"
            )
        elif lacking:
            notes.append(
                f"{n}: input bands {', '.join(d.bands)} ({d.sensor}) share no name with "
                f"{declared.name}; the band hypernetwork embeds them by wavelength/polarization"
            )
    for msg in notes:
        warnings.warn(msg, MissingInputWarning, stacklevel=4)  # the embed_rasters caller
    return notes


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """The geometry of one run: the reference pixel grid of the embedded region, the
    token size in its pixels, the token grid written out, and the tiles by tile row."""

    grid: Grid
    token_px: int
    tile: int
    overlap: int
    rows: tuple[tuple[Tile, ...], ...]

    @property
    def tokens(self) -> Grid:
        t, g = self.token_px, self.grid
        a, b, c, d, e, f = g.transform
        return Grid(g.crs, (a * t, b * t, c, d * t, e * t, f), -(-g.height // t), -(-g.width // t))

    @property
    def tile_tok(self) -> int:
        return self.tile // self.token_px

    @property
    def overlap_tok(self) -> int:
        return self.overlap // self.token_px

    def row_start(self, i: int) -> int:
        """First token row of tile row ``i``."""
        return self.rows[i][0].row // self.token_px

    def cut(self, i: int) -> int:
        """Token row where tile row ``i`` starts to own the output (halfway into its overlap
        with row ``i - 1``); ``cut(0) = 0``, ``cut(len(rows))`` = the token grid height."""
        if i <= 0:
            return 0
        if i >= len(self.rows):
            return self.tokens.height
        return self.row_start(i) + self.overlap_tok // 2

    @property
    def num_tiles(self) -> int:
        return sum(len(r) for r in self.rows)


def make_layout(grid: Grid, token_px: int, tile: int, overlap: int) -> Layout:
    if tile % token_px or overlap % token_px:
        raise ValueError(
            f"tile {tile} and overlap {overlap} px must be multiples of the token size "
            f"({token_px} px = patch x pixel) so that token grids align; e.g. tile "
            f"{max(1, round(tile / token_px)) * token_px}, overlap "
            f"{round(overlap / token_px) * token_px}"
        )
    all_tiles = tiles(grid.height, grid.width, tile, overlap)
    rows: dict[int, list[Tile]] = {}
    for t in all_tiles:
        rows.setdefault(t.row, []).append(t)
    return Layout(grid, token_px, tile, overlap, tuple(tuple(r) for r in rows.values()))


# ---------------------------------------------------------------------------- sources


def _union(ts: Sequence[Tile]) -> tuple[int, int, int, int]:
    r0, c0 = min(t.row for t in ts), min(t.col for t in ts)
    r1, c1 = max(t.row + t.height for t in ts), max(t.col + t.width for t in ts)
    return r0, c0, r1 - r0, c1 - c0


def _crop_padded(d: ModalityData, r: int, c: int, h: int, w: int) -> ModalityData:
    """A window of an unbatched modality; parts outside are invalid zeros."""
    T, C, H, W = d.pixels.shape
    px = d.pixels.new_zeros(T, C, h, w)
    ok = d.valid.new_zeros(T, h, w)
    r0, r1, c0, c1 = max(r, 0), min(r + h, H), max(c, 0), min(c + w, W)
    if r1 > r0 and c1 > c0:
        px[..., r0 - r : r1 - r, c0 - c : c1 - c] = d.pixels[..., r0:r1, c0:c1]
        ok[..., r0 - r : r1 - r, c0 - c : c1 - c] = d.valid[..., r0:r1, c0:c1]
    grid = d.grid.window(r, c, h, w) if d.grid is not None else None
    return replace(d, pixels=px, valid=ok, grid=grid)


@dataclass
class Source:
    """Hands out tiles: ``read_tiles(tiles)`` -> one ``{modality: ModalityData}`` per tile.
    ``scale[m]`` = modality-m pixels per reference pixel (``patch_m / token_px``)."""

    layout: Layout
    scale: dict[str, float]
    dates: dict[str, list[int]]
    sensors: dict[str, str]
    meta: dict = field(default_factory=dict)

    def _read(self, window: tuple[int, int, int, int]) -> dict[str, ModalityData]:
        raise NotImplementedError

    def _aligned(self, window):
        return window

    def read_tiles(self, ts: Sequence[Tile]) -> list[dict[str, ModalityData]]:
        r, c, h, w = self._aligned(_union(ts))
        chunk = self._read((r, c, h, w))
        out = []
        for t in ts:
            one = {}
            for m, d in chunk.items():
                k = self.scale[m]
                win = [round(v * k) for v in (t.row - r, t.col - c, t.height, t.width)]
                one[m] = d.crop(*win)
            out.append(one)
        return out


class ArraySource(Source):
    """In-memory modalities (unbatched ``ModalityData``) as a source."""

    def __init__(self, sample: Mapping[str, ModalityData], config, tile: int, overlap: int):
        H = max(d.shape_hw[0] for d in sample.values())
        ref = next(n for n, d in sample.items() if d.shape_hw[0] == H)
        W = sample[ref].shape_hw[1]
        token = config.modalities[ref].patch
        scale = {}
        for n, d in sample.items():
            k = d.shape_hw[0] / H  # modality pixels per reference pixel
            scale[n] = config.modalities[n].patch / token
            if abs(k - scale[n]) > 1e-6 or abs(d.shape_hw[1] - W * k) > 1e-6:
                raise ValueError(
                    f"modality {n!r}: {d.shape_hw} px does not cover the same area at "
                    f"patch {config.modalities[n].patch} as {ref!r} ({H}x{W} px, patch {token})"
                )
        g = sample[ref].grid or Grid(None, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), H, W)
        layout = make_layout(Grid(g.crs, g.transform, H, W), token, tile, overlap)
        super().__init__(
            layout,
            scale,
            {n: d.dates.tolist() for n, d in sample.items()},
            {n: d.sensor for n, d in sample.items()},
        )
        self.sample = dict(sample)

    def _read(self, window):
        return {
            n: _crop_padded(d, *[round(v * self.scale[n]) for v in window])
            for n, d in self.sample.items()
        }


def _finest(infos: list[dict]) -> dict:
    base = infos[0]["crs"]
    cands = [i for i in infos if same_crs(i["crs"], base)]
    area = min(i["res"][0] * i["res"][1] for i in cands)
    return next(i for i in cands if i["res"][0] * i["res"][1] <= area * (1 + 1e-6))


def _modality_grid(ref: Grid, k: float, rows_tok: int, cols_tok: int, patch: int) -> Grid:
    """The reference grid with pixels ``1/k`` times larger, covering the token grid."""
    a, b, c, d, e, f = ref.transform
    s = 1.0 / k
    return Grid(ref.crs, (a * s, b * s, c, d * s, e * s, f), rows_tok * patch, cols_tok * patch)


class RasterSource(Source):
    """GeoTIFF inputs matched to the checkpoint's modalities, checked up front."""

    def __init__(self, config, inputs: Mapping[str, RasterInput], tile: int, overlap: int, region):
        self.inputs = match_modalities(config, inputs)
        for inp in self.inputs.values():
            try:
                sensors.get(inp.sensor)
            except sensors.SensorError as e:
                raise RasterError(f"{_first(inp)}: {e}") from None
        infos = {n: [open_info(p) for p in _flat_paths(i.paths)] for n, i in self.inputs.items()}
        ref_info = _finest([i for v in infos.values() for i in v])
        ref_mod = next(n for n, v in infos.items() if any(i is ref_info for i in v))
        token = config.modalities[ref_mod].patch
        full = ref_info["grid"]
        r0, c0, h, w = region if region is not None else (0, 0, full.height, full.width)
        if h <= 0 or w <= 0 or r0 < 0 or c0 < 0 or r0 + h > full.height or c0 + w > full.width:
            raise ValueError(
                f"region {tuple(region)} (row, col, height, width) is not inside the reference "
                f"raster {ref_info['path']} ({full.height} x {full.width} px)"
            )
        layout = make_layout(full.window(r0, c0, h, w), token, tile, overlap)
        self.block = ref_info["block_shape"]
        self.offset = (r0, c0)
        tok = layout.tokens
        scale, self.grids = {}, {}
        for n in self.inputs:
            p = config.modalities[n].patch
            scale[n] = p / token
            self.grids[n] = _modality_grid(layout.grid, scale[n], tok.height, tok.width, p)
            own = _finest(infos[n])["res"][0]
            if abs(own - self.grids[n].res[0]) > 1e-3 * own:
                log.info(
                    "%s: %g-unit pixels are resampled to %g to match the token grid "
                    "(patch %d)", n, own, self.grids[n].res[0], p,
                )  # fmt: skip
        super().__init__(layout, scale, {}, {n: i.sensor for n, i in self.inputs.items()})
        self.reference = ref_info["path"]
        self.preflight = self._preflight()
        self.dates = {n: d.dates.tolist() for n, d in self.preflight.items()}

    def _kwargs(self, n: str) -> dict:
        i = self.inputs[n]
        return dict(
            bands=i.bands, nodata=i.nodata, cloud_masks=i.cloud_masks, resampling=i.resampling
        )

    def _preflight(self) -> dict[str, ModalityData]:
        """Every check of the io layer (files, sensor, bands, dates, CRS, overlap) on a
        one-token window, so that a bad input fails before the first tile."""
        out = {}
        for n, i in self.inputs.items():
            p = round(self.scale[n] * self.layout.token_px)
            out[n] = read_modality(
                i.paths,
                i.sensor,
                i.dates,
                grid=self.grids[n],
                window=(0, 0, p, p),
                **self._kwargs(n),
            )
        return out

    def _aligned(self, window):
        """Snap a read window outward to the reference file's blocks when blocks are whole
        tokens, no larger than the window (strip files would be re-read whole otherwise)
        and the region starts on a token; never past the raster's edge."""
        r, c, h, w = window
        (bh, bw), t, (r0, c0) = self.block, self.layout.token_px, self.offset
        if bh % t or bw % t or r0 % t or c0 % t:
            return window
        g = self.layout.grid
        R, H = _snap(r + r0, h, bh, t, r0 + g.height)
        C, W = _snap(c + c0, w, bw, t, c0 + g.width)
        return (R - r0, C - c0, H, W)

    def _read(self, window):
        out = {}
        for n, i in self.inputs.items():
            win = tuple(round(v * self.scale[n]) for v in window)
            out[n] = read_modality(
                i.paths, i.sensor, self.dates[n], grid=self.grids[n], window=win, **self._kwargs(n)
            )
        return out


def _snap(lo: int, n: int, block: int, t: int, limit: int) -> tuple[int, int]:
    """``[lo, lo + n)`` grown to block edges (ends stop at ``limit``, rounded to tokens)."""
    if block > n:
        return lo, n
    a = lo // block * block
    b = max(lo + n, min(-(-(lo + n) // block) * block, limit))
    if b > lo + n:
        b = -(-b // t) * t
    return a, b - a


def _flat_paths(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    out = []
    for e in paths:
        out += [e] if isinstance(e, (str, os.PathLike)) else list(e)
    return out


def tile_has_data(sample: Mapping[str, ModalityData]) -> bool:
    return any(bool(d.valid.any()) for d in sample.values())


def pixel_area_km2(grid: Grid) -> float:
    """Area of one pixel: metres for projected CRSs; degrees scaled at the grid's centre
    latitude for geographic ones (throughput reporting only)."""
    a, b, _, d, e, _ = grid.transform
    area = abs(a * e - b * d)
    if grid.crs is not None:
        from rasterio.crs import CRS

        crs = CRS.from_user_input(grid.crs)
        if crs.is_geographic:
            lat = (grid.bounds[1] + grid.bounds[3]) / 2
            return area * 111.32 * 110.57 * math.cos(math.radians(lat))
    return area / 1e6


def stack(samples: Sequence[Mapping[str, ModalityData]], device) -> dict[str, ModalityData]:
    """Tiles -> one batched ``ModalityData`` per modality on ``device``."""
    out = {}
    for m in samples[0]:
        ds = [s[m] for s in samples]
        out[m] = ModalityData(
            pixels=torch.stack([d.pixels for d in ds]).to(device, non_blocking=True),
            valid=torch.stack([d.valid for d in ds]).to(device, non_blocking=True),
            dates=torch.stack([d.dates for d in ds]).to(device),
            sensor=ds[0].sensor,
            bands=ds[0].bands,
        )
    return out


__all__ = [
    "ArraySource",
    "Layout",
    "MissingInputWarning",
    "RasterInput",
    "RasterSource",
    "load_manifest",
    "make_layout",
    "match_modalities",
    "missing_report",
]
