"""``rsfm demo``: the end-to-end demo on an embedded default (a synthetic scene).

Stages: environment report -> synthetic S2 + S1 scene written as GeoTIFFs -> what the
reader sees -> short CPU pretraining of rsfm_tiny (`rsfm pretrain --config tiny_cpu`) ->
export (config.json + model.safetensors) -> embeddings of the scene (COG, GeoParquet,
npz) with the shipped ``rsfm_tiny_real`` checkpoint (pretrained on real imagery,
docs/models.md) -> frozen linear probe and S1->S2 retrieval of the demo's model, the
shipped one and a random init.

Decision: training, export and evaluation run as subprocesses of the `rsfm` command, so
rsfm_core never imports rsfm_train or DeepSpeed (the inference side stays training-free).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SHIPPED = "rsfm_tiny_real"  # the checkpoint shipped in the package, pretrained on real imagery

EXAMPLE = """example:
  rsfm demo --out demo_out          # what `bash scripts/demo.sh` runs
  rsfm demo --out /tmp/d --size 128 --seed 3 --pretrain-steps 300"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="end-to-end demo on a synthetic scene",
        description="Run the end-to-end demo on an embedded default, in steps: (1) print "
        "the environment (rsfm info); (2) write a synthetic Sentinel-2 + Sentinel-1 scene as "
        "GeoTIFFs and read it back through rsfm's reader; (3) pretrain rsfm_tiny on the CPU "
        "for --pretrain-steps steps (rsfm pretrain --config tiny_cpu); (4) export it "
        f"(rsfm export); (5) embed the scene with the shipped {SHIPPED} checkpoint (dense "
        "COG, GeoParquet, npz); (6) frozen linear probe and S1->S2 retrieval of the demo's "
        "model, the shipped one and a random init (rsfm eval). After step 5 it writes "
        "demo.png (S2 RGB, S1 VV, labels, embedding principal components; needs "
        "matplotlib: pip install matplotlib, or the rsfm[viz] extra). --pretrain-steps 0 stops "
        "after step 2. Everything is written under --out.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--size", type=int, default=64, help="scene pixels per side (default 64)")
    p.add_argument("--dates", type=int, default=4, help="dates per sensor (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=150,
        help="optimizer steps of the CPU pretraining (default 150; 0 stops after reading)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rsfm_core import io, synthetic
    from rsfm_core.envinfo import report
    from rsfm_core.sample import from_days

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
    if args.pretrain_steps <= 0:
        return 0
    return _train_embed_probe(args, out, manifest)


def _rsfm(*argv: str) -> None:
    """Run one `rsfm` subcommand in a child process; its failure stops the demo."""
    print("$ rsfm " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "rsfm_core.cli", *argv], check=True)


def _train_embed_probe(args: argparse.Namespace, out: Path, manifest: dict) -> int:
    from rsfm_core.inference import Embedder, RasterInput
    from rsfm_core.model.checkpoint import resolve_folder

    run_dir, model_dir = out / "pretrain", out / "model"
    steps = args.pretrain_steps
    print(f"\n== pretraining rsfm_tiny on synthetic scenes ({steps} steps, CPU) ==")
    _rsfm("pretrain", "--config", "tiny_cpu", "--no-progress", f"run.out_dir={run_dir}",
          f"optim.total_steps={steps}", f"optim.warmup_steps={max(1, steps // 10)}",
          f"run.ckpt_every={steps}", "run.resume=auto")  # fmt: skip
    print("\n== export ==")
    _rsfm("export", str(run_dir), str(model_dir))

    print(f"\n== embeddings of the demo scene with the shipped {SHIPPED} (docs/models.md) ==")
    emb = Embedder.from_pretrained(SHIPPED)
    files = {s: manifest["sensors"][s]["files"] for s in ("sentinel2_l2a", "sentinel1_grd")}
    inputs = {
        "s2": RasterInput("sentinel2_l2a", files["sentinel2_l2a"]),
        "s1": RasterInput("sentinel1_grd", files["sentinel1_grd"]),
    }
    res = emb.embed_rasters(inputs, out=out / "embeddings.tif", parquet=out / "chips.parquet",
                            npz=out / "embeddings.npz", tile=64, overlap=16, progress=False)  # fmt: skip
    print(res.summary())
    for f in ("embeddings.tif", "chips.parquet", "embeddings.npz"):
        print(f"  wrote {out / f}")
    print(picture(out))

    print("\n== frozen-encoder probe on held-out synthetic scenes: the demo's pretraining, "
          f"{SHIPPED} and a random init ==")  # fmt: skip
    shipped = resolve_folder(SHIPPED)
    subprocess.run([sys.executable, "-m", "rsfm_train.evaluate", str(model_dir), str(shipped),
                    "--random-baseline", "--scenes", "6"], check=True)  # fmt: skip
    print(f"\ndemo outputs are in {out}")
    return 0


# ------------------------------------------------------------------------------ picture

PICTURE_NAME = "demo.png"
NO_MATPLOTLIB = (
    "picture: skipped, matplotlib is not installed (pip install matplotlib or rsfm[viz], then run the "
    "demo again)"
)


def pca_rgb(embedding, valid):
    """The first three principal components of an embedding map ``(D, h, w)`` over its
    ``valid`` ``(h, w)`` locations as an RGB image ``(h, w, 3)`` in 0..1 (each component
    stretched between its 2nd and 98th percentiles; invalid locations black)."""
    import numpy as np

    e = np.asarray(embedding, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool) & np.isfinite(e).all(axis=0)
    rgb = np.zeros((*ok.shape, 3))
    x = e[:, ok].T  # (n, D)
    if len(x) < 2:
        return rgb
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    pcs = x @ vt[:3].T  # (n, <=3)
    for i in range(pcs.shape[1]):
        lo, hi = np.percentile(pcs[:, i], [2, 98])
        rgb[ok, i] = np.clip((pcs[:, i] - lo) / max(hi - lo, 1e-12), 0, 1)
    return rgb


def _stretch(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    good = np.isfinite(x)
    if not good.any():
        return np.zeros_like(x)
    lo, hi = np.percentile(x[good], [2, 98])
    return np.where(good, np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1), 0.0)


def render_picture(rgb, sar_db, labels, class_names, emb_rgb, path) -> Path:
    """One PNG, four panels side by side: optical RGB ``(H, W, 3)``, SAR backscatter
    ``(H, W)`` in dB, the label map ``(H, W)`` and the embedding's principal components
    ``(h, w, 3)``. Needs matplotlib (ImportError otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(1, 4, figsize=(16, 4.4))
    ax[0].imshow(np.stack([_stretch(rgb[..., i]) for i in range(3)], -1))
    ax[0].set_title("Sentinel-2 RGB (first date)")
    ax[1].imshow(_stretch(sar_db), cmap="gray")
    ax[1].set_title("Sentinel-1 VV, dB (first date)")
    im = ax[2].imshow(labels, cmap="tab10", vmin=-0.5, vmax=9.5, interpolation="nearest")
    ax[2].set_title("land-cover labels")
    cbar = fig.colorbar(im, ax=ax[2], ticks=range(len(class_names)), fraction=0.046)
    cbar.ax.set_yticklabels(class_names, fontsize=7)
    cbar.ax.set_ylim(-0.5, len(class_names) - 0.5)
    ax[3].imshow(emb_rgb, interpolation="nearest")
    ax[3].set_title("embedding: principal components 1-3")
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def picture(out: Path) -> str:
    """Write ``out/demo.png`` from the demo's scene and embeddings; the line to print."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return NO_MATPLOTLIB
    import numpy as np

    from rsfm_core import io, synthetic

    m = synthetic.load_manifest(out / "scene" / "manifest.json")
    s2e, s1e = m["sensors"]["sentinel2_l2a"], m["sensors"]["sentinel1_grd"]
    s2 = io.read_modality(s2e["files"][:1], "sentinel2_l2a")
    s1 = io.read_modality(s1e["files"][:1], "sentinel1_grd")
    rgb = s2.pixels[0, [s2.bands.index(b) for b in ("B04", "B03", "B02")]].permute(1, 2, 0)
    rgb = np.where(s2.valid[0, ..., None].numpy(), rgb.numpy(), np.nan)
    sar = np.where(s1.valid[0].numpy(), s1.pixels[0, s1.bands.index("VV")].numpy(), np.nan)
    labels = io.read_modality([out / "scene" / "labels.tif"], None, ["2000-01-01"])
    with np.load(out / "embeddings.npz") as z:
        emb_rgb = pca_rgb(z["embedding"], z["valid"])
    path = render_picture(
        rgb, sar, labels.pixels[0, 0].numpy(), m["classes"], emb_rgb, out / PICTURE_NAME
    )
    return f"picture: {path} (S2 RGB, S1 VV, labels, embedding principal components)"
