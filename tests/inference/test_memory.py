"""Streaming is memory-bounded: embedding a raster 4 (16, slow) times taller costs (almost) no more
memory. Each run is a fresh process whose peak RSS (Linux VmHWM) is reset just before the
embedding, so the peak is the embedding's own, not the imports'. The model is the local
stub, so the input pipeline, the row blender and the writers are what is measured. A
whole-raster read of the tall scene would add about 0.5 GB. Measured with glibc's default
and with freed memory kept for reuse (``cliutil.keep_freed_memory``, what ``rsfm embed``
sets on CPU): kept memory must not become growth either."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import make_scene

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import rsfm_core as rs
from tests.inference.conftest import LocalStub, inputs_of
scene, out = json.loads(sys.argv[1]), sys.argv[2]
if sys.argv[3] == "keep":
    from rsfm_core.cliutil import keep_freed_memory
    keep_freed_memory()
emb = rs.Embedder(LocalStub(), device="cpu")
from benchmarks._common import peak_rss_mb, reset_peak_rss, rss_mb
reset_peak_rss()  # VmHWM := VmRSS
before = rss_mb()
res = emb.embed_rasters(inputs_of(scene), out, tile=256, overlap=32, batch=4,
                        dtype="float32", progress=False, cache_mb=16)
print(json.dumps({"before": before * 2**20, "peak": peak_rss_mb() * 2**20, "tiles": res.tiles}))
"""

W = 512


def _growth(folder: Path, h: int, malloc: str) -> tuple[int, int]:
    scene = make_scene(folder, h=h, w=W, nodata_corner=False)
    scene = {k: [str(p) for p in v] for k, v in scene.items()}
    p = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(scene), str(folder / "emb.tif"), malloc],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return r["peak"] - r["before"], r["tiles"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
@pytest.mark.parametrize(
    "height,share,malloc",
    [
        (2048, 0.5, "system"),
        (2048, 0.5, "keep"),
        pytest.param(8192, 0.2, "system", marks=pytest.mark.slow),
        pytest.param(8192, 0.2, "keep", marks=pytest.mark.slow),
    ],
    ids=["4x", "4x-kept", "16x", "16x-kept"],
)
def test_peak_memory_does_not_grow_with_raster_height(tmp_path, height, share, malloc):
    """4x the rows in the default suite, 16x under ``slow``. ``share``: the growth allowed,
    as a share of what reading the extra rows whole would cost (a fixed ~17 MB of writer
    and GDAL-cache growth is a larger share of 4x than of 16x)."""
    short, n_short = _growth(tmp_path / "short", 512, malloc)
    tall, n_tall = _growth(tmp_path / "tall", height, malloc)
    assert n_tall >= 0.6 * (height / 512) * n_short  # it did embed the whole tall raster
    assert short > 0 and tall > 0  # the reset worked: the peaks are the embeddings' own
    # float32 pixels of S2 (12 bands) + S1 (2 bands), 2 dates each: what reading the extra
    # rows at once would cost
    whole_extra = (height - 512) * W * (12 + 2) * 2 * 4
    assert tall - short < share * whole_extra, (
        f"peak RSS grew by {(tall - short) / 2**20:.0f} MB for {height // 512}x the rows "
        f"(reading them whole would be {whole_extra / 2**20:.0f} MB)"
    )
