"""What the embedder is asked to read: raster inputs (:class:`RasterInput`, built by hand,
from STAC items or from a manifest) and their match to the checkpoint's modalities;
:func:`missing_report` says which modalities and bands the inputs lack. The tile-reading
side (layout, sources) is :mod:`.tiles`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import sensors
from ..io import RasterError
from ..sample import ModalityData

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
                    f"input {key!r} ({first_path(inp)}): not a modality of this checkpoint; "
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


def first_path(inp: RasterInput) -> str:
    p = inp.paths
    while isinstance(p, (list, tuple)) and p:
        p = p[0]
    return str(p)


def missing_report(config, given: Mapping[str, ModalityData]) -> list[str]:
    """Notes on the checkpoint's modalities and bands the inputs lack.

    Decision (issue 17): a whole modality left out is normal use (the model is trained
    with modality drop-out and takes any subset), so it is logged at INFO, not warned;
    bands missing from a given modality change what the model sees and stay a
    :class:`MissingInputWarning`. Both are returned (``EmbedResult.warnings``)."""
    notes = []
    absent = [f"{n} ({m.sensor})" for n, m in config.modalities.items() if n not in given]
    if absent:
        msg = (
            f"modalities not given: {', '.join(absent)}; embedding with "
            f"{', '.join(given)} only (the model accepts missing modalities)"
        )
        log.info("%s", msg)
        notes.append(msg)
    warned = []
    for n, d in given.items():
        declared = config.sensor(config.modalities[n].sensor)
        lacking = [b for b in declared.band_names if b not in d.bands]
        if lacking and len(lacking) < len(declared.band_names):
            warned.append(
                f"{n}: bands {', '.join(lacking)} of {declared.name} are missing from the "
                f"input; embedding with its {len(d.bands)} bands ({', '.join(d.bands)})"
            )
        elif lacking:
            warned.append(
                f"{n}: input bands {', '.join(d.bands)} ({d.sensor}) share no name with "
                f"{declared.name}; the band hypernetwork embeds them by wavelength/polarization"
            )
    for msg in warned:
        warnings.warn(msg, MissingInputWarning, stacklevel=4)  # the embed_rasters caller
    return notes + warned


__all__ = [
    "MissingInputWarning",
    "RasterInput",
    "load_manifest",
    "match_modalities",
    "missing_report",
]
