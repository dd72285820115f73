"""Scenes to chip for ``rsfm prepare``: a scene is an id, a reference grid and an iterator
of ``((row, col), {modality: ModalityData})`` chips. Sources: synthetic scenes, scene
lists of GeoTIFFs (YAML manifests), and the real corpus (:mod:`.corpus`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rsfm_core.sample import Grid, ModalityData, from_days

# Sensor -> the model's modality name (rsfm_core.model.config.default_modalities).
MODALITY_OF_SENSOR = {
    "sentinel2_l2a": "s2",
    "sentinel2_l1c": "s2",
    "sentinel1_grd": "s1",
    "enmap": "hs",
    "rgb_highres": "rgb",
}


@dataclass
class Scene:
    """One scene to chip: its id, reference grid and a chip iterator."""

    id: str
    grid: Grid
    dates: dict[str, list[str]]
    chips: Iterator[tuple[tuple[int, int], dict[str, ModalityData]]]
    stats: dict[str, int] = field(default_factory=lambda: {"chips": 0, "skipped": 0})


def _safe_id(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(s)).strip("-") or "scene"


def _window(d: ModalityData, k: int, r: int, c: int, size: int) -> ModalityData:
    """Chip ``(r, c, size)`` in reference pixels of a modality with k-times coarser pixels;
    parts past the scene edge are invalid zeros (like the GeoTIFF reader)."""
    r, c, n = r // k, c // k, size // k
    T, C, H, W = d.pixels.shape
    px, ok = d.pixels.new_zeros(T, C, n, n), d.valid.new_zeros(T, n, n)
    h, w = max(0, min(n, H - r)), max(0, min(n, W - c))
    px[..., :h, :w] = d.pixels[..., r : r + h, c : c + w]
    ok[..., :h, :w] = d.valid[..., r : r + h, c : c + w]
    grid = d.grid.window(r, c, n, n) if d.grid is not None else None
    return replace(d, pixels=px, valid=ok, grid=grid, meta={})


def _factor(d: ModalityData, ref: Grid, chip: int) -> int:
    k = ref.height // d.shape_hw[0] if d.shape_hw[0] else 1
    if k < 1 or ref.height != k * d.shape_hw[0] or chip % k:
        raise ValueError(
            f"{d.sensor}: {d.shape_hw} px does not divide the scene grid or --chip {chip}"
        )
    return k


def synthetic_scenes(
    n: int, size: int, chip: int, sensors: tuple[str, ...], num_dates: int, seed: int
):
    """``n`` synthetic scenes (modality names from :data:`MODALITY_OF_SENSOR`)."""
    from rsfm_core import synthetic
    from rsfm_core.io import tiles

    names = {s: MODALITY_OF_SENSOR.get(s, s) for s in sensors}
    for i in range(n):
        scene_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0] & 0x7FFFFFFF)
        s = synthetic.make_scene(size, sensors=sensors, seed=scene_seed, num_dates=num_dates)
        mods = {names[k]: v for k, v in s.modalities.items()}
        dates = {m: [from_days(x).isoformat() for x in d.dates.tolist()] for m, d in mods.items()}

        def chips(mods=mods, grid=s.grid):
            for t in tiles(grid.height, grid.width, chip):
                yield (
                    (t.row, t.col),
                    {
                        m: _window(d, _factor(d, grid, chip), t.row, t.col, chip)
                        for m, d in mods.items()
                    },
                )

        yield Scene(f"synth{i:05d}", s.grid, dates, chips())


def _resolve_paths(paths: Any, base: Path) -> Any:
    if isinstance(paths, (list, tuple)):
        return [_resolve_paths(p, base) for p in paths]
    p = Path(str(paths))
    return str(p if p.is_absolute() or "://" in str(paths) else base / p)


def _reference_grid(entries: Mapping[str, Mapping]) -> Grid:
    """The finest file grid (first file's CRS wins ties), as ``read_sample`` chooses it."""
    from rsfm_core.io import open_info
    from rsfm_core.io.tiling import same_crs

    files = []
    for e in entries.values():
        stack = [e["paths"]]
        while stack:
            x = stack.pop()
            if isinstance(x, list):
                stack.extend(x)
            else:
                files.append(x)
    grids = [open_info(f)["grid"] for f in sorted(files)]
    cands = [g for g in grids if same_crs(g.crs, grids[0].crs)]
    return min(cands, key=lambda g: g.res[0] * g.res[1])


def entry_scenes(scenes: list, chip: int, base: Path | None = None) -> Iterator[Scene]:
    """Scenes of a scene list ``[{"id", "modalities": {name: read_sample entry}}]``,
    chipped in ``chip`` px windows of the finest grid; relative paths (data files and
    cloud-mask files) are relative to ``base``."""
    from rsfm_core.io import read_sample, tiles

    base = Path(base or ".")
    where = str(base)
    for i, sc in enumerate(scenes):
        if not isinstance(sc, dict) or not isinstance(sc.get("modalities"), dict):
            raise ValueError(
                f"{where}: scene {i} needs 'modalities: {{name: {{sensor, paths, ...}}}}'"
            )
        entries = {}
        for name, e in sc["modalities"].items():
            e = {**e, "paths": _resolve_paths(e["paths"], base)}
            if e.get("cloud_masks") is not None:
                e["cloud_masks"] = _resolve_masks(e["cloud_masks"], base)
            entries[name] = e
        ref = _reference_grid(entries)

        def chips(entries=entries, ref=ref):
            for t in tiles(ref.height, ref.width, chip):
                yield (t.row, t.col), read_sample(entries, grid=ref, window=t.window)

        yield Scene(_safe_id(sc.get("id", f"scene{i:05d}")), ref, {}, chips())


def _resolve_masks(masks: Any, base: Path) -> Any:
    if isinstance(masks, dict):
        return {**masks, "path": _resolve_paths(masks["path"], base)}
    if isinstance(masks, (list, tuple)):
        return [_resolve_masks(m, base) for m in masks]
    return _resolve_paths(masks, base)


def manifest_scenes(path: str | os.PathLike, chip: int) -> Iterator[Scene]:
    """Scenes of a YAML scene list (see the module docstring)."""
    import yaml

    path = Path(path)
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(doc.get("scenes"), list) or not doc["scenes"]:
        raise ValueError(f"{path}: needs a non-empty 'scenes:' list (see rsfm prepare --help)")
    return entry_scenes(doc["scenes"], chip, path.parent)
