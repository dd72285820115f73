"""The ``rsfm`` command.

Each subcommand's parser lives next to its code (``add_parser(subparsers)``); parser
modules import only argparse at module level and handlers import their stack lazily, so
``rsfm --help`` stays fast and ``rsfm info`` never imports DeepSpeed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rsfm_core.cliutil import passive_openmp, run_command

# (module, function) adding one subcommand each, in the order --help lists them.
SUBCOMMANDS = (
    ("rsfm_core.cli", "add_info_parser"),
    ("rsfm_core.cli", "add_synth_parser"),
    ("rsfm_core.demo", "add_parser"),
    ("rsfm_core.inference.cli", "add_parser"),
    ("rsfm_train.data.prepare", "add_prepare_parser"),
    ("rsfm_train.pretrain", "add_pretrain_parser"),
    ("rsfm_train.export", "add_export_parser"),
    ("rsfm_train.evaluate", "add_eval_parser"),
)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``rsfm embed: error: ...; see rsfm embed --help``) and
    exit code 2, like every other error of the command; subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rsfm", description="rsfm: multimodal remote-sensing foundation model")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for mod, fn in SUBCOMMANDS:
        getattr(importlib.import_module(mod), fn)(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every error is one line on stderr with exit code 2 (usage
    errors from argparse too); ``RSFM_TRACEBACK=1`` shows tracebacks instead."""
    args = build_parser().parse_args(argv)
    passive_openmp()  # before any handler loads torch (docs/performance.md, threads)
    return run_command(f"rsfm {args.cmd}", args.func, args)


def add_info_parser(sub) -> None:
    p = sub.add_parser(
        "info",
        help="versions, devices, kernel backends and sensors",
        description="Print package versions, devices, which kernel backends can run here "
        "(or why not) and the registered sensors.",
        epilog="example: rsfm info",
    )
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    from rsfm_core.envinfo import report

    print(report())
    return 0


_SYNTH_EXAMPLE = """example:
  rsfm synth --out /tmp/scene --size 256 --dates 6 \\
      --sensors sentinel2_l2a,sentinel1_grd,landsat8_oli --seed 1
then: json.load(open("/tmp/scene/manifest.json"))["sensors"][name] has the files and
dates to pass to rsfm_core.io.read_modality(files, name, dates)."""


def add_synth_parser(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic multi-sensor scene (GeoTIFFs + labels + manifest.json)",
        description="Render a physically plausible synthetic scene (land-cover map, optical "
        "reflectance with phenology and clouds, SAR backscatter with speckle) and write one "
        "GeoTIFF per sensor and date, a label raster and manifest.json.",
        epilog=_SYNTH_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--size", type=int, default=64, help="pixels per side (default 64)")
    p.add_argument("--classes", type=int, default=6, help="land-cover classes, 2..9 (default 6)")
    p.add_argument("--dates", type=int, default=4, help="dates per sensor (default 4)")
    p.add_argument(
        "--sensors",
        default="sentinel2_l2a,sentinel1_grd",
        help="comma-separated registry names (default sentinel2_l2a,sentinel1_grd)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--cloud-fraction", type=float, default=0.1, help="mean cloud cover (0.1)")
    p.add_argument("--cog", action="store_true", help="write Cloud-Optimized GeoTIFFs")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from rsfm_core import synthetic

    sensors = tuple(s.strip() for s in args.sensors.split(",") if s.strip())
    try:
        scene = synthetic.make_scene(
            args.size,
            num_classes=args.classes,
            num_dates=args.dates,
            sensors=sensors,
            seed=args.seed,
            cloud_fraction=args.cloud_fraction,
        )
    except ValueError as e:  # bad sizes, class counts, unknown sensors: say what, no traceback
        print(f"rsfm synth: {e}", file=sys.stderr)
        return 2
    m = synthetic.write_scene(scene, args.out, cog=args.cog)
    g = m["grid"]
    print(
        f"wrote {args.out}: {g['height']}x{g['width']} px, {g['crs']}, "
        f"origin ({g['transform'][2]:.0f}, {g['transform'][5]:.0f}), "
        f"{g['transform'][0]:g} m pixels"
    )
    print(f"classes: {', '.join(m['classes'])}  (labels.tif)")
    for name, e in m["sensors"].items():
        print(
            f"  {name:<22} {len(e['files']):>2} files  {len(e['bands']):>3} bands  "
            f"{e['dtype']:<7} valid {e['valid_fraction']:.1%}  {e['dates'][0]} .. {e['dates'][-1]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
