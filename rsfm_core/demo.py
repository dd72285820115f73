"""``rsfm demo``: the end-to-end demo on an embedded default (a synthetic scene).

Today: environment report -> synthetic S2 + S1 scene written as GeoTIFFs -> read back
through the GeoTIFF reader, printing what it sees. Later stages (short CPU pretraining,
export, embedding, probe) are added by their issues.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = """example:
  rsfm demo --out demo_out          # what `bash scripts/demo.sh` runs
  rsfm demo --out /tmp/d --size 128 --seed 3"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="end-to-end demo on a synthetic scene",
        description="Run the demo on an embedded default: write a synthetic Sentinel-2 + "
        "Sentinel-1 scene as GeoTIFFs and read it back through rsfm's reader.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--size", type=int, default=64, help="scene pixels per side (default 64)")
    p.add_argument("--dates", type=int, default=4, help="dates per sensor (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rsfm_core import io, synthetic
    from rsfm_core.data import from_days
    from rsfm_core.envinfo import report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("== rsfm info ==")
    print(report())

    print(f"\n== synthetic scene ({args.size}x{args.size} px, seed {args.seed}) ==")
    scene = synthetic.make_scene(args.size, num_dates=args.dates, seed=args.seed)
    manifest = synthetic.write_scene(scene, out / "scene")
    print(
        f"wrote {out / 'scene'} ({len(manifest['classes'])} classes: {', '.join(manifest['classes'])})"
    )

    print("\n== what the reader sees ==")
    for name, entry in synthetic.load_manifest(out / "scene" / "manifest.json")["sensors"].items():
        data = io.read_modality(entry["files"], name)  # dates from the files' RSFM_DATE tags
        px, valid = data.pixels, data.valid
        dates = ", ".join(str(from_days(int(d))) for d in data.dates)
        print(
            f"{name}: pixels {tuple(px.shape)} [T, C, H, W] {px.dtype}, bands {', '.join(data.bands)}"
        )
        print(
            f"  dates {dates}; valid {valid.float().mean().item():.1%}; grid {data.grid.crs}, "
            f"{data.grid.res[0]:g} m"
        )
        for c, band in enumerate(data.bands):
            v = px[:, c][valid]
            print(
                f"  {band:>4}: median {v.median().item():8.4f}  range [{v.min().item():.4f}, "
                f"{v.max().item():.4f}]"
            )
    return 0
