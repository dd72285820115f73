"""A STAC Item describing one embedding run's outputs (issue 18), written by hand.

Decision: plain JSON, not ``pystac`` (not installed here, and the Item is one small
dict): STAC 1.0.0 Item with the projection extension. One Item per run, next to the
first output (``<stem>.stac.json``), with every output of the run as an asset (hrefs
relative to the Item). What it records, so that embeddings of different models or
versions are never mixed silently:

- ``geometry``/``bbox``: the map's footprint in lon/lat (edges densified, as the
  GeoParquet's ``geometry_crs84``); null without a CRS;
- ``proj:code`` (or ``proj:wkt2``), ``proj:shape``, ``proj:transform`` of the token grid
  and ``gsd`` = the token's side in CRS units;
- ``start_datetime``/``end_datetime`` = the inputs' first and last date (``datetime``
  null, as STAC asks for a range), ``rsfm:inputs`` (sensor, bands, dates per modality);
- ``rsfm:model``, ``rsfm:model_sha256`` (the weights' SHA-256), ``rsfm:model_verified``,
  ``rsfm:model_rsfm_version``, ``rsfm:version``, ``rsfm:features``, ``rsfm:token_px``,
  ``rsfm:tile``, ``rsfm:overlap``, ``rsfm:positions``, ``rsfm:resolution``,
  ``rsfm:dtype`` (and the int8 note).

No timestamps of the run itself: repeated runs give identical bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..sample import Grid

MEDIA = {
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".parquet": "application/vnd.apache.parquet",
    ".npz": "application/octet-stream",
}
TITLES = {
    "embeddings": "dense embeddings on the token grid (COG)",
    "chips": "per-chip embeddings (GeoParquet 1.1)",
    "npz": "dense and chip embeddings (numpy .npz)",
}
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


def stac_path(first_output: Path) -> Path:
    """Where a run's Item goes: ``<folder>/<stem>.stac.json`` of its first output."""
    first_output = Path(first_output)
    return first_output.with_name(first_output.stem + ".stac.json")


def _footprint(grid: Grid) -> tuple[dict | None, list | None]:
    if grid.crs is None:
        return None, None
    from rasterio.warp import transform as warp

    from .geoparquet import CRS84, _ring, _to_xy

    xy = _to_xy(grid, _ring(0, 0, grid.height, grid.width, 8))  # counterclockwise in px
    lon, lat = warp(grid.crs, CRS84, xy[:, 0].tolist(), xy[:, 1].tolist())
    ring = [[round(x, 9), round(y, 9)] for x, y in zip(lon, lat)]
    if _signed_area(ring) < 0:  # GeoJSON: exterior rings counterclockwise
        ring = ring[::-1]
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    return {"type": "Polygon", "coordinates": [ring]}, [round(v, 9) for v in bbox]


def _signed_area(ring) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))


def _projection(grid: Grid) -> dict:
    out = {"proj:shape": [grid.height, grid.width], "proj:transform": list(grid.transform)}
    if grid.crs is None:
        out["proj:code"] = None
        return out
    from rasterio.crs import CRS

    crs = CRS.from_user_input(grid.crs)
    epsg = crs.to_epsg()
    if epsg is not None:
        out["proj:code"] = f"EPSG:{epsg}"
    else:
        out["proj:code"] = None
        out["proj:wkt2"] = crs.to_wkt()
    return out


def stac_item(item_id: str, grid: Grid, tags: Mapping[str, str], assets: Mapping[str, Path],
              near: Path, dtype: str) -> dict:  # fmt: skip
    """The Item (a dict) of a run whose dense token grid is ``grid`` and whose ``RSFM_*``
    tags (as written into the COG) are ``tags``; ``assets``: key -> output path, written
    relative to the folder of ``near`` (where the Item goes)."""
    geometry, bbox = _footprint(grid)
    inputs = json.loads(tags["RSFM_INPUTS"])
    dates = sorted(d for m in inputs.values() for d in m["dates"])
    props = {
        "datetime": None,
        "start_datetime": f"{dates[0]}T00:00:00Z" if dates else None,
        "end_datetime": f"{dates[-1]}T23:59:59Z" if dates else None,
        "gsd": abs(float(grid.transform[0])),
        **_projection(grid),
        "rsfm:dtype": dtype,
    }
    for k, v in sorted(tags.items()):
        key = "rsfm:" + k.removeprefix("RSFM_").lower()
        if k == "RSFM_INPUTS":
            v = inputs
        elif k in ("RSFM_FEATURES", "RSFM_TOKEN_PX", "RSFM_TILE", "RSFM_OVERLAP"):
            v = int(v)
        elif k == "RSFM_MODEL_VERIFIED":
            v = v == "true"
        props[key] = v
    folder = Path(near).parent
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [PROJECTION],
        "id": item_id,
        "geometry": geometry,
        "properties": props,
        "links": [],
        "assets": {
            key: {
                "href": os.path.relpath(Path(p), folder),
                "type": MEDIA[Path(p).suffix],
                "roles": ["data"],
                "title": TITLES.get(key, key),
            }
            for key, p in assets.items()
        },  # fmt: skip
    }
    if bbox is not None:
        item["bbox"] = bbox
    return item


def write_item(path: Path, item: dict) -> Path:
    """``item`` as indented JSON at ``path`` (the caller renames it into place)."""
    Path(path).write_text(json.dumps(item, indent=2, sort_keys=False) + "\n")
    return Path(path)


__all__ = ["stac_item", "stac_path", "write_item"]
