"""Embedding throughput: GeoTIFF scene -> rsfm_core.Embedder.embed_rasters -> COG + chips.

    python -m benchmarks.embed                          # rsfm_tiny, 2048 x 2048 px, CPU
    python -m benchmarks.embed --models rsfm_tiny,rsfm_base --size 512
    python -m benchmarks.embed --huge --rows 1024       # 20,000 x 20,000 px, first 1024 rows
    python -m benchmarks.embed --json runs/bench_embed.json

Reports km2/s and pixels/s (10 m pixels), the time split into read / compute / write /
finalize (COG + GeoParquet), and the peak RSS of the process that embedded (each case
runs in a fresh subprocess; peak = Linux VmHWM, reset when the case starts, plus a 0.5 s
sampler of the current RSS that says when the peak happened). Weights are random
(``Embedder.random``): throughput does not depend on them.

The scene is written block by block with rasterio windowed writes (smooth fields plus
texture, deterministic per block), so any size fits in memory: Sentinel-2 L2A (uint16)
and optionally Sentinel-1 (float32 dB), one file per date, 10 m, UTM 33N. ``--huge``
writes 20,000 x 20,000 px with the four 10 m S2 bands (3.2 GB raw); ``--rows R``
embeds only the region of the first R pixel rows across the full width (the stitching
buffer and the row writes are full-width, so peak memory is that of the whole run) and
the table extrapolates the whole-scene time from that rate, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import _common as C

S2_10M = ["B02", "B03", "B04", "B08"]


# ---------------------------------------------------------------------------- scene


def _field(bands: int, r0: int, c0: int, h: int, w: int, seed: int) -> np.ndarray:
    """(bands, h, w) in [0, 1]: a few sinusoids of the absolute pixel coordinates (seamless
    across blocks) plus per-pixel hash texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[r0 : r0 + h, c0 : c0 + w].astype(np.float32)
    out = np.empty((bands, h, w), np.float32)
    for b in range(bands):
        f = rng.uniform(0.002, 0.03, (3, 2))
        ph = rng.uniform(0, 2 * np.pi, 3)
        v = sum(np.sin(f[k, 0] * yy + f[k, 1] * xx + ph[k]) for k in range(3)) / 6 + 0.5
        tex = ((yy * 73856093 + xx * 19349663 + b * 83492791) % 1000) / 1000.0
        out[b] = 0.85 * v + 0.15 * tex
    return out


def write_scene(folder: Path, size: int, dates: int, bands: list[str], s1: bool) -> dict:
    """One GeoTIFF per sensor and date (tiled 512, DEFLATE), written 2048 rows at a time."""
    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {"s2": [], "s1": []}
    prof = dict(driver="GTiff", width=size, height=size, crs="EPSG:32633", tiled=True,
                blockxsize=512, blockysize=512, compress="deflate", bigtiff="IF_SAFER",
                transform=Affine(10, 0, 400000, 0, -10, 5000000))  # fmt: skip
    kinds = [("s2", "uint16", 0, bands)] + (
        [("s1", "float32", float("nan"), ["VV", "VH"])] if s1 else []
    )
    for kind, dtype, nodata, names in kinds:
        for t in range(dates):
            path = folder / f"{kind}_{size}_{t}.tif"
            files[kind].append(str(path))
            if path.exists():
                continue
            tmp = path.with_suffix(".partial.tif")
            with rasterio.open(
                tmp, "w", count=len(names), dtype=dtype, nodata=nodata, **prof
            ) as ds:
                ds.update_tags(RSFM_DATE=f"2021-{4 + t:02d}-15")
                for i, n in enumerate(names, start=1):
                    ds.set_band_description(i, n)
                for r in range(0, size, 2048):
                    h = min(2048, size - r)
                    x = _field(len(names), r, 0, h, size, seed=t * 97 + (kind == "s1"))
                    x = 200 + x * 4000 if kind == "s2" else -22 + 17 * x
                    ds.write(x.astype(dtype), window=((r, r + h), (0, size)))
            os.replace(tmp, path)
    return files


# ---------------------------------------------------------------------------- one case


class _RssSampler:
    """Samples this process's resident memory every 0.5 s: when did the peak happen?"""

    def __init__(self) -> None:
        import threading

        self.t0, self.peak, self.at, self.stop = time.perf_counter(), 0.0, 0.0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            rss = C.rss_mb()
            if rss > self.peak:
                self.peak, self.at = rss, time.perf_counter() - self.t0
            time.sleep(0.5)


def check_outputs(out: Path) -> dict:
    """What the outputs hold (a cheap sanity check of a run, in the results): the COG's
    size, bands, internal tiling and overview levels, its nodata tokens (band 1, read by
    blocks), and the GeoParquet row count."""
    import pyarrow.parquet as pq
    import rasterio

    with rasterio.open(out / "emb.tif") as ds:
        nodata = 0
        for _, win in ds.block_windows(1):
            nodata += int(np.isnan(ds.read(1, window=win)).sum())
        info = {"cog_width": ds.width, "cog_height": ds.height, "cog_bands": ds.count,
                "cog_dtype": ds.dtypes[0],
                "cog_nbits": ds.tags(1, "IMAGE_STRUCTURE").get("NBITS"), "cog_block": list(ds.block_shapes[0]),
                "cog_overviews": ds.overviews(1), "cog_nodata_tokens": nodata}  # fmt: skip
    info["parquet_rows"] = pq.ParquetFile(out / "chips.parquet").metadata.num_rows
    return info


def run_case(case: dict) -> dict:
    """Embed one scene with one model (in this process) and report."""
    C.reset_peak_rss()
    import warnings

    import torch

    import rsfm_core as rs

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    files, out = case["files"], Path(case["out"])
    inputs = {"s2": rs.RasterInput("sentinel2_l2a", files["s2"])}
    if files.get("s1"):
        inputs["s1"] = rs.RasterInput("sentinel1_grd", files["s1"])
    from rsfm_core.inference import run as embed_run

    phases = {}
    finalize = embed_run.finalize

    def timed_finalize(*a, **k):  # the peak RSS of streaming, before the outputs are written
        phases["stream_peak_rss_mb"] = C.peak_rss_mb()
        phases["finalize_at_s"] = time.perf_counter() - sampler.t0
        return finalize(*a, **k)

    embed_run.finalize = timed_finalize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, bands/modalities not given
        emb = rs.Embedder.random(case["model"], device=case["device"])
        if emb.device.type == "cpu":  # as `rsfm embed` does
            from rsfm_core.cliutil import keep_freed_memory

            phases["malloc"] = keep_freed_memory()
        rss0 = C.peak_rss_mb()
        sampler = _RssSampler()
        res = emb.embed_rasters(
            inputs, out / "emb.tif", parquet=out / "chips.parquet", tile=case["tile"],
            overlap=case["overlap"], batch=case["batch"], dtype="float16",
            region=case.get("region"), progress=case.get("progress", False),
        )  # fmt: skip
    s = res.seconds
    sampler.stop = True
    phases.update(sampled_peak_mb=sampler.peak, sampled_peak_at_s=sampler.at)
    return {
        "model": case["model"], "scene_px": case["size"], "region_px": res.pixels,
        "tiles": res.tiles, "computed": res.computed, "km2": res.km2,
        "s_total": s["total"], "s_read": s["read"], "s_compute": s["compute"],
        "s_write": s["write"], "s_finalize": s["finalize"],
        "km2_per_s": res.km2 / s["total"], "px_per_s": res.pixels / s["total"],
        "peak_rss_mb": C.peak_rss_mb(), "rss_before_embed_mb": rss0, **phases,
        "threads": torch.get_num_threads(), "device": str(emb.device),
        "out_mb": sum(p.stat().st_size for p in (res.out, res.parquet)) / 2**20,
        **check_outputs(out),
    }  # fmt: skip


def _subprocess(case: dict) -> dict:
    """Run one case in a fresh interpreter so that its peak RSS is its own."""
    env = {**os.environ}
    if case.get("threads"):
        env["OMP_NUM_THREADS"] = str(case["threads"])
    # with a progress bar the case's stderr (tqdm, logs) goes straight to ours
    err = None if case.get("progress") else subprocess.PIPE
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.embed", "--case", json.dumps(case)],
        cwd=C.REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
    )  # fmt: skip
    if p.returncode != 0:
        raise RuntimeError(f"case {case['model']} failed:\n{(p.stderr or '')[-4000:]}")
    line = next(x for x in p.stdout.splitlines()[::-1] if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


# ---------------------------------------------------------------------------- throughput

IMG_PX, IMG_KM2 = 128, (128 * 10 / 1000) ** 2  # 128 x 128 px of 10 m = 1.6384 km2


def _images(batch: int, device):
    import torch

    import rsfm_core as rs

    g = torch.Generator().manual_seed(0)
    px = 0.02 + 0.43 * torch.rand(batch, 1, 12, IMG_PX, IMG_PX, generator=g)
    d = rs.ModalityData(px, torch.ones(batch, 1, IMG_PX, IMG_PX, dtype=torch.bool),
                        torch.full((batch, 1), 19000), "sentinel2_l2a",
                        rs.sensors.get("sentinel2_l2a").band_names)  # fmt: skip
    return {"s2": d.to(device)}


def gflop_per_image(name: str) -> float | None:
    """Forward GFLOP of one 128 x 128 x 12 image (torch's FlopCounterMode, CPU float32:
    matmuls, convolutions and SDPA; kernels it cannot see would be left out)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import rsfm_core as rs

    model = rs.build_model(name).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(_images(1, "cpu"))
    return fc.get_total_flops() / 1e9


def throughput(
    models: list[str], device: str, batch: int, compile_modes=(False, True)
) -> list[dict]:
    """Images/s and km2/s of the encoder forward on 128 x 128 px x 12-band S2 images, on
    the device (inputs already there, outputs left there), bf16 autocast on CUDA (float32
    on CPU), eager and ``torch.compile``; a compile failure is reported, not hidden."""
    import torch

    import rsfm_core as rs

    dev = torch.device(device)
    bf16 = dev.type == "cuda"
    rows = []
    for name in models:
        gf = gflop_per_image(name)
        emb = rs.Embedder.random(name, device=dev, dtype="bfloat16" if bf16 else "float32")
        data = _images(batch, dev)
        for compiled in compile_modes:
            row = {"model": name, "device": C.device_name(dev), "batch": batch,
                   "dtype": "bf16" if bf16 else "float32", "compile": compiled,
                   "gflop_per_image": gf}  # fmt: skip
            model = emb.model
            try:
                if compiled:
                    model = torch.compile(emb.model)

                def fwd(model=model, data=data):
                    with (
                        torch.inference_mode(),
                        torch.autocast(dev.type, torch.bfloat16, enabled=bf16),
                    ):
                        return model(data)

                t0 = time.perf_counter()
                fwd()  # first call: compilation
                row["first_call_s"] = time.perf_counter() - t0
                ms = C.time_ms(fwd, dev)
                row.update(ms_per_batch=ms, images_per_s=batch / (ms / 1e3),
                           km2_per_s=batch * IMG_KM2 / (ms / 1e3))  # fmt: skip
                if gf:
                    row["tflop_per_s"] = row["images_per_s"] * gf / 1e3
            except Exception as e:  # reported in the table and the JSON
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------- seams


def seam_ratio(values: np.ndarray, tile_list, token_px: int) -> float:
    """Mean feature distance between neighbouring tokens across tile borders divided by
    the same between neighbours inside tiles (rows and columns together; NaN tokens are
    left out). ``values`` (D, h, w); ``tile_list``: the run's tiles in pixels
    (:func:`rsfm_core.io.tiles`); borders are every tile's first and one-past-last token
    column/row inside the map. 1.0: borders look like the rest of the map."""
    D, h, w = values.shape
    cols = {t.col // token_px for t in tile_list} | {
        (t.col + t.width) // token_px for t in tile_list
    }
    rows = {t.row // token_px for t in tile_list} | {
        (t.row + t.height) // token_px for t in tile_list
    }
    dc = np.linalg.norm(values[:, :, 1:] - values[:, :, :-1], axis=0)  # (h, w-1): (j-1, j)
    dr = np.linalg.norm(values[:, 1:] - values[:, :-1], axis=0)  # (h-1, w)
    bc = np.zeros(w - 1, bool)
    bc[[j - 1 for j in cols if 0 < j < w]] = True
    br = np.zeros(h - 1, bool)
    br[[i - 1 for i in rows if 0 < i < h]] = True
    across = np.concatenate([dc[:, bc].ravel(), dr[br].ravel()])
    inside = np.concatenate([dc[:, ~bc].ravel(), dr[~br].ravel()])
    return float(np.nanmean(across) / np.nanmean(inside))


def seams(checkpoint: str | None, data: Path, tile: int, overlaps: list[int]) -> list[dict]:
    """Seam ratio on the real Sen1Floods11 chip (S1 + S2, 512 x 512 px) embedded with
    small tiles, next to the same ratio of the untiled map at the same borders."""
    import rsfm_core as rs

    d = data / "sen1floods11"
    date = ["2019-09-18"]
    s2, s1 = str(d / "Spain_7370579_S2Hand.tif"), str(d / "Spain_7370579_S1Hand.tif")
    inputs = {"s2": rs.RasterInput("sentinel2_l1c", [s2], date),
              "s1": rs.RasterInput("sentinel1_grd", [s1], date)}  # fmt: skip
    emb = (rs.Embedder.from_pretrained(checkpoint, device="cpu") if checkpoint
           else rs.Embedder.random("rsfm_tiny", device="cpu"))  # fmt: skip
    whole = emb.embed({"s2": rs.io.read_modality(s2, "sentinel2_l1c", date),
                       "s1": rs.io.read_modality(s1, "sentinel1_grd", date)}).dense[0].numpy()  # fmt: skip
    out = []
    with __import__("tempfile").TemporaryDirectory() as tmp:
        for ov in overlaps:
            res = emb.embed_rasters(inputs, npz=Path(tmp) / "e.npz", tile=tile, overlap=ov,
                                    dtype="float32", progress=False)  # fmt: skip
            x = np.load(Path(tmp) / "e.npz")["embedding"].astype(np.float32)
            ts = rs.io.tiles(512, 512, tile, ov)
            out.append({"tile": tile, "overlap": ov, "seam_ratio": seam_ratio(x, ts, 4),
                        "untiled_same_borders": seam_ratio(whole, ts, 4),
                        "nan_tokens": int(np.isnan(x[0]).sum()), "tiles": res.tiles})  # fmt: skip
    return out


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        help="comma-separated registry names (rsfm_tiny; --throughput: rsfm_tiny,rsfm_base)",
    )
    p.add_argument("--size", type=int, default=2048, help="scene side in px (default 2048)")
    p.add_argument("--huge", action="store_true", help="20,000 x 20,000 px, S2 10 m bands")
    p.add_argument("--rows", type=int, help="embed only the first ROWS pixel rows (full width)")
    p.add_argument("--dates", type=int, default=1, help="dates per sensor (default 1)")
    p.add_argument("--s1", action="store_true", help="add Sentinel-1 (VV, VH)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", default="", help="comma-separated torch thread counts to try")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", action="store_true", help="show the embed progress bar (stderr)")
    p.add_argument("--data", default=str(C.REPO / "runs" / "bench_embed"), help="scene folder")
    p.add_argument(
        "--throughput",
        action="store_true",
        help="in-memory encoder throughput on 128 px x 12-band images (default with --device cuda)",
    )
    p.add_argument(
        "--img-batch", type=int, help="images per forward for --throughput (256 on CUDA)"
    )
    p.add_argument("--no-compile", action="store_true", help="--throughput: eager only")
    p.add_argument(
        "--seams",
        action="store_true",
        help="seam ratio on the real Sen1Floods11 chip (see seam_ratio) and exit",
    )
    p.add_argument("--seam-tile", type=int, default=64, help="tile for --seams (default 64)")
    p.add_argument("--checkpoint", help="checkpoint folder for --seams (default: random weights)")
    p.add_argument(
        "--real-data",
        default=os.environ.get("RSFM_REAL_DATA", str(C.REPO.parent / "shared" / "data")),
    )
    p.add_argument("--case", help=argparse_hidden())
    a = p.parse_args(argv)
    if a.case:
        print("RESULT " + json.dumps(run_case(json.loads(a.case))), flush=True)
        return 0
    if a.throughput or a.device.startswith("cuda"):
        models = (a.models or "rsfm_tiny,rsfm_base").split(",")
        dev = (
            a.device
            if a.device != "auto"
            else ("cuda" if C.default_device().type == "cuda" else "cpu")
        )
        batch = a.img_batch or (256 if dev.startswith("cuda") else 4)
        rows = throughput(models, dev, batch, (False,) if a.no_compile else (False, True))
        cols = ["model", "batch", "dtype", "compile", "first_call_s", "ms_per_batch",
                "images_per_s", "km2_per_s", "gflop_per_image", "tflop_per_s", "error"]  # fmt: skip
        C.print_table(rows, cols, f"encoder forward, 128 x 128 px x 12 bands, {rows[0]['device']}")
        if a.json:
            C.write_json(a.json, {"benchmark": "embed throughput", "results": rows})
        return 0
    if a.seams:
        rows = seams(a.checkpoint, Path(a.real_data), a.seam_tile, [0, 16, 32])
        C.print_table(
            rows,
            list(rows[0]),
            f"seam ratio, Sen1Floods11 chip, {a.checkpoint or 'random rsfm_tiny'}",
        )
        if a.json:
            C.write_json(a.json, {"benchmark": "embed seams", "results": rows})
        return 0
    size = 20000 if a.huge else a.size
    bands = S2_10M if a.huge else None
    from rsfm_core import sensors

    t0 = time.perf_counter()
    names = bands or list(sensors.get("sentinel2_l2a").band_names)
    files = write_scene(Path(a.data), size, a.dates, names, a.s1 and not a.huge)
    print(f"scene {size} x {size} px ready in {time.perf_counter() - t0:.0f} s ({a.data})")
    region = (0, 0, min(a.rows, size), size) if a.rows else None
    rows = []
    for model in (a.models or "rsfm_tiny").split(","):
        for threads in [int(t) for t in a.threads.split(",") if t] or [None]:
            out = Path(a.data) / f"out_{model}_{threads or 'default'}"
            out.mkdir(parents=True, exist_ok=True)
            case = dict(model=model, size=size, files=files, out=str(out), tile=a.tile,
                        overlap=a.overlap, batch=a.batch, region=region, threads=threads,
                        device=a.device, progress=a.progress)  # fmt: skip
            r = _subprocess(case)
            if region:
                r["extrapolated_full_s"] = r["s_total"] * size * size / r["region_px"]
            rows.append(r)
            C.print_table([r], list(r)[:10] + ["km2_per_s", "px_per_s", "peak_rss_mb"])
    cols = ["model", "threads", "scene_px", "region_px", "tiles", "km2", "s_total", "s_read",
            "s_compute", "s_write", "s_finalize", "km2_per_s", "px_per_s", "rss_before_embed_mb",
            "stream_peak_rss_mb", "peak_rss_mb"]  # fmt: skip
    if region:
        cols.append("extrapolated_full_s")
    C.print_table(
        rows, cols, title=f"embed_rasters on {C.device_name()} ({time.strftime('%Y-%m-%d')})"
    )
    if region:
        print(f"extrapolated_full_s: the whole {size} x {size} scene at the measured rate "
              f"(only {region[2]} rows were embedded)")  # fmt: skip
    if a.json:
        C.write_json(a.json, {"benchmark": "embed", "results": rows})
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
