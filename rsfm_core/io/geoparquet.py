"""Per-chip embeddings as GeoParquet 1.1 (pyarrow; the ``geo`` metadata written by hand).

One row per chip (a ``chip x chip`` pixel square of the token-aligned chip grid, clipped
to the raster; chips with no valid token are left out):

| column | type | meaning |
|---|---|---|
| ``chip_id`` | int64 | row-major index in the chip grid |
| ``row``, ``col``, ``height``, ``width`` | int32 | the chip's pixel window in the embedded region |
| ``geometry`` | WKB Polygon | true footprint in the source CRS (rotated grids stay rotated; counterclockwise) |
| ``geometry_crs84`` | WKB Polygon | the footprint in lon/lat (OGC:CRS84), edges densified |
| ``bbox`` | struct<xmin,ymin,xmax,ymax> | covering of ``geometry`` (GeoParquet 1.1 bbox covering) |
| ``date_start``, ``date_end`` | date32 | first/last date of the modalities valid in the chip |
| ``sensors``, ``modalities`` | list<string> | those valid in the chip |
| ``valid_fraction`` | float32 | share of the chip's tokens with a valid embedding |
| ``embedding`` | fixed_size_list<float32>[D] | mean of the chip's valid dense tokens |

File metadata ``geo``: version 1.1.0, primary column ``geometry`` (its CRS as PROJJSON
from rasterio's ``CRS.to_dict(projjson=True)``; ``null`` when the source has no CRS, and
then no CRS84 column), per column encoding WKB, geometry_types, bbox; ``rsfm`` holds the
run's provenance. Rows are streamed to a temporary file, then copied row group by row
group into the final one once the file-level bboxes are known.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..sample import Grid

CRS84 = "OGC:CRS84"


@dataclass(frozen=True)
class ChipContext:
    """What turns a chip's token window into a row."""

    grid: Grid  # reference pixel grid of the region
    token_px: int
    chip_tok: int  # chip side in tokens
    modalities: Sequence[str]  # bit i of the mask = modalities[i]
    sensors: Mapping[str, str]
    dates: Mapping[str, Sequence[int]]


def _ring(r: int, c: int, h: int, w: int, n: int) -> np.ndarray:
    """Closed pixel-coordinate ring (col, row) around a window, ``n`` points per edge."""
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    top = np.stack([c + w * t, np.full(n, r)], 1)
    right = np.stack([np.full(n, c + w), r + h * t], 1)
    bottom = np.stack([c + w - w * t, np.full(n, r + h)], 1)
    left = np.stack([np.full(n, c), r + h - h * t], 1)
    ring = np.concatenate([top, right, bottom, left])
    return np.concatenate([ring, ring[:1]]).astype(np.float64)


def _to_xy(grid: Grid, ring: np.ndarray) -> np.ndarray:
    a, b, c, d, e, f = grid.transform
    cols, rows = ring[:, 0], ring[:, 1]
    return np.stack([a * cols + b * rows + c, d * cols + e * rows + f], 1)


def chip_rows(chips: list[dict], ctx: ChipContext) -> dict[str, list]:
    """Columns (python lists / arrays) for ``chips`` from :func:`rsfm_core.io.writers.chips_of_strip`."""
    import shapely
    from rasterio.warp import transform as warp
    from shapely.geometry.polygon import orient

    g, t = ctx.grid, ctx.token_px
    cols: dict[str, list] = {k: [] for k in (
        "chip_id", "row", "col", "height", "width", "geometry", "geometry_crs84", "bbox",
        "date_start", "date_end", "sensors", "modalities", "valid_fraction", "embedding",
    )}  # fmt: skip
    ck = ctx.chip_tok
    width_tok = -(-g.width // t)
    per_row = -(-width_tok // ck)  # chips per chip row
    for ch in chips:
        tr, tc, th, tw = ch["tok"]
        r, c = tr * t, tc * t
        h, w = min(th * t, g.height - r), min(tw * t, g.width - c)
        xy = _to_xy(g, _ring(r, c, h, w, 1))
        poly = orient(shapely.Polygon(xy))
        mods = [m for i, m in enumerate(ctx.modalities) if ch["bits"] >> i & 1]
        days = [d for m in mods for d in ctx.dates[m]]
        cols["chip_id"].append((tr // ck) * per_row + tc // ck)
        for k, v in zip(("row", "col", "height", "width"), (r, c, h, w)):
            cols[k].append(v)
        cols["geometry"].append(shapely.to_wkb(poly))
        x0, y0, x1, y1 = poly.bounds
        cols["bbox"].append({"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1})
        if g.crs is not None:
            dense = _to_xy(g, _ring(r, c, h, w, 4))
            lon, lat = warp(g.crs, CRS84, dense[:, 0].tolist(), dense[:, 1].tolist())
            cols["geometry_crs84"].append(shapely.to_wkb(orient(shapely.Polygon(zip(lon, lat)))))
        cols["date_start"].append(min(days) if days else None)
        cols["date_end"].append(max(days) if days else None)
        cols["modalities"].append(mods)
        cols["sensors"].append(sorted({ctx.sensors[m] for m in mods}))
        cols["valid_fraction"].append(ch["valid_fraction"])
        cols["embedding"].append(ch["vector"])
    if g.crs is None:
        del cols["geometry_crs84"]
    return cols


def _schema(dim: int, has_crs84: bool):
    import pyarrow as pa

    fields = [
        ("chip_id", pa.int64()), ("row", pa.int32()), ("col", pa.int32()),
        ("height", pa.int32()), ("width", pa.int32()), ("geometry", pa.binary()),
    ]  # fmt: skip
    if has_crs84:
        fields.append(("geometry_crs84", pa.binary()))
    bbox = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])
    fields += [
        ("bbox", bbox), ("date_start", pa.date32()), ("date_end", pa.date32()),
        ("sensors", pa.list_(pa.string())), ("modalities", pa.list_(pa.string())),
        ("valid_fraction", pa.float32()), ("embedding", pa.list_(pa.float32(), dim)),
    ]  # fmt: skip
    return pa.schema(fields)


def _table(cols: dict[str, list], schema):
    import pyarrow as pa

    arrays = []
    for f in schema:
        v = cols[f.name]
        if f.name == "embedding":
            flat = pa.array(np.concatenate(v) if v else np.zeros(0, np.float32))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, f.type.list_size))
        else:
            arrays.append(pa.array(v, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def geo_metadata(grid: Grid, bbox: list | None, bbox84: list | None) -> dict:
    from rasterio.crs import CRS

    crs = None if grid.crs is None else CRS.from_user_input(grid.crs).to_dict(projjson=True)
    cov = {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    cols = {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs,
                         "orientation": "counterclockwise", "covering": cov}}  # fmt: skip
    if bbox:
        cols["geometry"]["bbox"] = bbox
    if grid.crs is not None:
        cols["geometry_crs84"] = {"encoding": "WKB", "geometry_types": ["Polygon"],
                                  "orientation": "counterclockwise"}  # fmt: skip
        if bbox84:
            cols["geometry_crs84"]["bbox"] = bbox84
    return {"version": "1.1.0", "primary_column": "geometry", "columns": cols}


class ChipWriter:
    """Streams chip rows to a temporary parquet file; :meth:`finish` writes the final one
    (with the ``geo`` metadata) and returns its temporary path for the caller to rename."""

    def __init__(self, tmp: Path, dim: int, ctx: ChipContext, provenance: Mapping) -> None:
        import pyarrow.parquet as pq

        self.tmp, self.ctx, self.provenance = tmp, ctx, dict(provenance)
        self.schema = _schema(dim, ctx.grid.crs is not None)
        self.writer = pq.ParquetWriter(tmp, self.schema, compression="zstd")
        self.bounds = [np.inf, np.inf, -np.inf, -np.inf]
        self.bounds84 = list(self.bounds)

    def _grow(self, box: list, wkbs: list) -> None:
        import shapely

        if wkbs:
            x0, y0, x1, y1 = shapely.total_bounds(shapely.from_wkb(wkbs))
            box[:] = [min(box[0], x0), min(box[1], y0), max(box[2], x1), max(box[3], y1)]

    def write(self, chips: list[dict]) -> None:
        if not chips:
            return
        cols = chip_rows(chips, self.ctx)
        self._grow(self.bounds, cols["geometry"])
        if "geometry_crs84" in cols:
            self._grow(self.bounds84, cols["geometry_crs84"])
        self.writer.write_table(_table(cols, self.schema))

    def finish(self, final_tmp: Path) -> Path:
        import pyarrow.parquet as pq

        self.writer.close()
        ok = lambda b: [float(v) for v in b] if np.isfinite(b).all() else None  # noqa: E731
        meta = {
            b"geo": json.dumps(geo_metadata(self.ctx.grid, ok(self.bounds), ok(self.bounds84))),
            b"rsfm": json.dumps(self.provenance, default=str),
        }
        src = pq.ParquetFile(self.tmp)
        schema = self.schema.with_metadata(meta)
        with pq.ParquetWriter(final_tmp, schema, compression="zstd") as w:
            for i in range(src.num_row_groups):
                w.write_table(src.read_row_group(i).replace_schema_metadata(meta))
        return final_tmp
