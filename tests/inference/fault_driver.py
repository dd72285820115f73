"""A child process for the fault tests of ``rsfm embed`` (tests/inference/test_faults.py):
runs the CLI (or the API) on a small scene with one fault injected at the start of the
final write (after the intermediate is complete, while temporaries exist).

    python fault_driver.py SCENARIO CKPT WORK

SCENARIO: ``sigterm``, ``sigint``, ``sigkill`` (the process signals itself), ``wait``
(blocks until WORK/go exists), ``fill`` (full-disk sweep on a small file system mounted
at WORK/disk; prints one line per attempt).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rsfm_core.inference.run import OutputSink  # noqa: E402
from tests.inference.conftest import S2_DATES, make_scene  # noqa: E402


def at_finalize(action) -> None:
    real = OutputSink.finish

    def finish(*args, **kwargs):
        action()
        return real(*args, **kwargs)

    OutputSink.finish = finish


def cli_args(ckpt: str, scene: dict, out: Path) -> list[str]:
    s2 = ",".join(str(p) for p in scene["s2"])
    return ["embed", "--checkpoint", ckpt, "--input", f"s2=sentinel2_l2a:{s2}",
            "--dates", f"s2={','.join(S2_DATES)}", "--out", str(out / "e.tif"),
            "--parquet", str(out / "c.parquet"), "--npz", str(out / "e.npz"),
            "--tile", "32", "--overlap", "8", "--no-progress"]  # fmt: skip


SWEEP_KB = range(32, 640, 96)
FINE_SWEEP_KB = range(244, 420, 12)  # around the run's real need (~360 KB)


def fill_sweep(ckpt: str, scene: dict, disk: Path) -> None:
    """Embed onto ``disk`` with less and less room; every attempt must end in a complete
    set of outputs or a "no space left" error, and leave no temporary behind."""
    import rsfm_core as rs
    from rsfm_core.inference import run as run_mod

    emb = rs.Embedder.from_pretrained(ckpt, device="cpu")
    inputs = {"s2": rs.RasterInput("sentinel2_l2a", [str(p) for p in scene["s2"]])}
    total = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    for precheck in (True, False):
        sizes = list(SWEEP_KB)
        if not precheck:  # the disk fills up during the run, in every writer in turn
            run_mod.check_space = lambda needs: None
            sizes += list(FINE_SWEEP_KB)
        for free_kb in sizes:
            filler = disk / "filler"
            with open(filler, "wb") as f:
                f.truncate(0)
                f.write(b"\0" * max(0, total - free_kb * 1024))
            try:
                emb.embed_rasters(inputs, disk / "e.tif", parquet=disk / "c.parquet",
                                  npz=disk / "e.npz", tile=32, overlap=8, progress=False)  # fmt: skip
                outcome = "OK"
            except Exception as e:  # noqa: BLE001 - reported to the test
                outcome = f"{type(e).__name__}: {e}"
            left = sorted(p.name for p in disk.iterdir() if p.name != "filler")
            print(f"precheck={precheck} free={free_kb}K -> {outcome} | left={left}", flush=True)
            for p in disk.iterdir():
                if p.name != "filler":
                    p.unlink()
            filler.unlink()


def main() -> int:
    scenario, ckpt, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    scene = make_scene(work / "scene", h=48, w=40, nodata_corner=False)
    if scenario == "fill":
        fill_sweep(ckpt, scene, work / "disk")
        return 0
    out = work / "out"
    out.mkdir(exist_ok=True)
    if scenario in ("sigterm", "sigint", "sigkill"):
        sig = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigkill": signal.SIGKILL}
        at_finalize(lambda: (os.kill(os.getpid(), sig[scenario]), time.sleep(0.5)))
    elif scenario == "wait":

        def wait() -> None:
            print("waiting", flush=True)
            while not (work / "go").exists():
                time.sleep(0.05)

        at_finalize(wait)
    from rsfm_core.cli import main as rsfm

    return rsfm(cli_args(ckpt, scene, out))


if __name__ == "__main__":
    sys.exit(main())
