"""``rsfm embed``: GeoTIFFs -> embedding COG / GeoParquet chips / npz.

Imports only argparse at module level (``rsfm --help`` stays fast); the handler imports
the inference stack.
"""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """examples:
  # two sensors, two dates each; dates from the flags (or from the files' RSFM_DATE tags)
  rsfm embed --checkpoint ckpt/ \\
      --input s2=sentinel2_l2a:s2_0501.tif,s2_0601.tif --dates s2=2024-05-01,2024-06-01 \\
      --input s1=sentinel1_grd:s1_0503.tif,s1_0604.tif --dates s1=2024-05-03,2024-06-04 \\
      --out emb.tif --parquet chips.parquet --npz emb.npz --tile 256 --overlap 32 --dtype int8

  # band-group files of one date joined with '+', their bands per file likewise
  rsfm embed --checkpoint ckpt/ --input s2=sentinel2_l2a:t0_10m.tif+t0_20m.tif \\
      --bands s2=B02,B03,B04,B08+B05,B06,B07,B8A,B11,B12 --dates s2=2024-05-01 --out emb.tif

  # a 13-band L1C file (Sen1Floods11) read as 12-band sentinel2_l2a: '-' skips B10
  rsfm embed --random rsfm_tiny --input s2=sentinel2_l2a:chip_S2Hand.tif --dates s2=2019-06-01 \\
      --bands s2=B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,-,B11,B12 --out chip.tif

  # EuroSAT-MS (L1C, B8A stored last), an untrained model for a smoke test
  rsfm embed --random rsfm_tiny --input s2=sentinel2_l1c:Forest_1.tif --dates s2=2017-06-01 \\
      --bands s2=B01,B02,B03,B04,B05,B06,B07,B08,B09,B10,B11,B12,B8A --out forest.tif

  # a manifest (YAML/JSON; also rsfm synth's manifest.json) or STAC items
  rsfm embed --checkpoint ckpt/ --manifest inputs.yaml --out emb.tif
  rsfm embed --checkpoint ckpt/ --stac s2=sentinel2_l2a:item_0501.json,item_0601.json --out emb.tif

inputs.yaml:
  inputs:
    s2: {sensor: sentinel2_l2a, paths: [a.tif, b.tif], dates: [2024-05-01, 2024-06-01]}
    s1: {sensor: sentinel1_grd, paths: [c.tif], dates: [2024-05-03]}
    s2b: {sensor: sentinel2_l2a, stac: [item.json]}   # or STAC items
  options: {tile: 256, overlap: 32}                    # EmbedOptions fields (flags win)"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed GeoTIFFs: dense COG, GeoParquet chips, npz",
        description="Stream GeoTIFFs of one place (several sensors and dates, any size) "
        "through an rsfm encoder in overlapping, blended tiles and write a dense embedding "
        "COG (source CRS, one band per feature), per-chip vectors as GeoParquet and/or npz.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = p.add_mutually_exclusive_group()
    m.add_argument("--checkpoint", help="folder with config.json + model.safetensors")
    m.add_argument("--random", metavar="MODEL", help="untrained model of this size (testing)")
    add = lambda *a, **k: p.add_argument(*a, action="append", default=[], **k)  # noqa: E731
    add("--input", metavar="NAME=SENSOR:F[,F..]", help="a modality: one file per date, "
        "comma-separated; '+' joins one date's band-group files (repeat per modality)")  # fmt: skip
    add("--dates", metavar="NAME=D[,D..]", help="one date per file entry (ISO); default: tags")
    add("--bands", metavar="NAME=B[,B..]", help="file band names in file order ('+' per "
        "file; '-' skips a file band, e.g. B10 of an L1C file read as sentinel2_l2a)")  # fmt: skip
    add("--stac", metavar="NAME=SENSOR:ITEM[,ITEM..]", help="STAC item JSONs, one per date")
    p.add_argument("--manifest", help="YAML/JSON manifest of inputs (and options)")
    p.add_argument("--out", help="dense embedding COG (.tif)")
    p.add_argument("--parquet", help="per-chip GeoParquet")
    p.add_argument("--npz", help="numpy archive (embedding, valid, transform, chips)")
    opt = lambda *a, **k: p.add_argument(*a, default=None, **k)  # noqa: E731
    opt("--tile", type=int, help="tile side in px, a multiple of the token (default 256)")
    opt("--overlap", type=int, help="tile overlap in px, a multiple of the token (default 32)")
    opt("--batch", type=int, help="tiles per forward pass (default 8)")
    opt(
        "--dtype",
        choices=("auto", "float16", "float32", "int8"),
        help="COG values (default auto: int8 when the float16 map would exceed 1 GiB, "
        "else float16; rasterio reads float16 files back as float32 and int8 as its "
        "integers: rsfm_core.read_embeddings returns float32 values for every dtype)",
    )
    opt("--chip", type=int, help="GeoParquet chip side in px (default: the tile)")
    opt("--resolution", choices=("token", "pixel"), help="COG grid (default token)")
    opt("--positions", choices=("tile", "global"), help="position frame (default tile)")
    opt("--region", help="ROW,COL,HEIGHT,WIDTH window of the reference raster to embed")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--verify", default="on", choices=("on", "off"),
                   help="checkpoint SHA-256 check (default on: a recorded digest must match; "
                   "off: load unverified weights you trust)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, value = it.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} {it!r}: expected NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _sensor_files(value: str, flag: str) -> tuple[str, list[str]]:
    sensor, sep, files = value.partition(":")
    if not sep or not files:
        raise ValueError(f"{flag} {value!r}: expected SENSOR:FILE[,FILE...]")
    return sensor.strip(), [f.strip() for f in files.split(",") if f.strip()]


SKIP = "-"  # in --bands: a file band that is not read


def _bands(value: str):
    """``B02,B03,-,B04+B05`` -> one list per file, None for a skipped ('-') band."""
    groups = [
        [None if b.strip() == SKIP else b.strip() for b in g.split(",") if b.strip()]
        for g in value.split("+")
    ]
    return groups[0] if len(groups) == 1 else groups


def build_inputs(args) -> tuple[dict, dict]:
    """RasterInputs from the flags and/or the manifest; returns (inputs, manifest rest)."""
    from rsfm_core.inference import RasterInput, load_manifest

    inputs, rest = load_manifest(args.manifest) if args.manifest else ({}, {})
    dates, bands = _pairs(args.dates, "--dates"), _pairs(args.bands, "--bands")
    for name, value in _pairs(args.input, "--input").items():
        sensor, entries = _sensor_files(value, "--input")
        paths = [e.split("+") if "+" in e else e for e in entries]
        d = dates.get(name)
        inputs[name] = RasterInput(
            sensor,
            paths,
            d.split(",") if d else None,
            _bands(bands[name]) if name in bands else None,
        )
    for name, value in _pairs(args.stac, "--stac").items():
        sensor, items = _sensor_files(value, "--stac")
        inputs[name] = RasterInput.from_stac(items, sensor)
    unused = (set(dates) | set(bands)) - set(_pairs(args.input, "--input"))
    if unused:
        raise ValueError(f"--dates/--bands name {sorted(unused)}, which no --input defines")
    if not inputs:
        raise ValueError("no inputs: give --input NAME=SENSOR:FILES, --stac or --manifest")
    return inputs, rest


def _options(args, manifest_options: dict) -> dict:
    import dataclasses

    from rsfm_core.inference import EmbedOptions

    keys = ("tile", "overlap", "batch", "dtype", "chip", "resolution", "positions", "region")
    out = dict(manifest_options or {})
    unknown = sorted(set(out) - {f.name for f in dataclasses.fields(EmbedOptions)})
    if unknown:
        raise ValueError(f"manifest options: unknown keys {unknown}")
    for k in keys:
        v = getattr(args, k)
        if v is not None:
            out[k] = v
    if isinstance(out.get("region"), str):
        out["region"] = tuple(int(v) for v in out["region"].split(","))
    out["progress"] = not args.no_progress
    return out


def run(args: argparse.Namespace) -> int:
    from rsfm_core.cliutil import error_line, keep_freed_memory, setup_threads

    setup_threads(workers=0)  # tiles are read by this process (RSFM_THREADS=N overrides)
    from rsfm_core.files import LockedError, NoSpaceError
    from rsfm_core.inference import CheckpointError, Embedder, EmbedOptions, RasterError
    from rsfm_core.inference.run import Interrupted

    try:
        inputs, rest = build_inputs(args)
        ckpt = args.checkpoint or rest.get("checkpoint")
        if args.random:
            emb = Embedder.random(args.random, device=args.device)
        elif ckpt:
            emb = Embedder.from_pretrained(ckpt, device=args.device, verify=args.verify)
        else:
            raise ValueError("give --checkpoint DIR (or --random MODEL for an untrained model)")
        opts = EmbedOptions(**_options(args, rest.get("options", {})))
        if emb.device.type == "cpu":
            keep_freed_memory()  # no page faults for every batch's activations
        res = emb.embed_rasters(inputs, args.out, parquet=args.parquet, npz=args.npz, options=opts)
    except (RasterError, CheckpointError, ValueError, KeyError, NoSpaceError, LockedError) as e:
        print(f"rsfm embed: error: {error_line(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:  # temporaries removed, older outputs kept
        print(f"rsfm embed: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rsfm embed: interrupted; no output was replaced", file=sys.stderr)
        return 130
    print(res.summary())
    g = res.grid
    print(f"token grid: {g.height} x {g.width}, {g.res[0]:g} units/token, {g.crs}")
    for what, path in (("dense COG", res.out), ("chips", res.parquet), ("npz", res.npz)):
        if path is not None:
            print(f"  {what:<10} {path}")
    return 0
