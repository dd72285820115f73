"""``rsfm embed`` under faults (issue 16, items 8-10): a full disk, Ctrl-C (also when GDAL
swallows it), SIGTERM, a killed run's temporaries, a second run on the same output, and
byte-reproducible outputs for every dtype."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rsfm_core as rs
from rsfm_core.io import cog

from .conftest import inputs_of, micro_embedder
from .fault_driver import FINE_SWEEP_KB, SWEEP_KB

DRIVER = Path(__file__).with_name("fault_driver.py")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    micro_embedder().model.save_pretrained(d)
    return d


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hidden(folder: Path) -> list[str]:
    """Temporaries (and locks) are hidden files next to the outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _old_outputs(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("e.tif", "c.parquet", "e.npz"):
        (folder / name).write_bytes(b"the previous run's " + name.encode())
    return {p.name: _sha(p) for p in folder.iterdir()}


CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # micro models: one thread is fastest


def _default_sigint() -> None:
    # a shell's background job starts with SIGINT ignored, and children inherit that:
    # these tests are about Ctrl-C, so they give the driver the interactive default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _drive(scenario: str, ckpt: Path, work: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), scenario, str(ckpt), str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
        preexec_fn=_default_sigint,
    )  # fmt: skip


@pytest.fixture
def interactive_sigint():
    """SIGINT raises KeyboardInterrupt in this process during the test, as in an
    interactive session, even when pytest runs as a background job (SIGINT ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


# ------------------------------------------------------------------ item 10: bytes


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
def test_same_inputs_and_weights_give_identical_bytes(micro, scene, tmp_path, dtype):
    """The default float16 COG included: GDAL's float16 edge tiles carried heap garbage
    in their padding (see rsfm_core.io.writers.defined_padding)."""
    digests = []
    for i in range(3):
        d = tmp_path / str(i)
        d.mkdir()
        micro.embed_rasters(inputs_of(scene), d / "e.tif", parquet=d / "c.parquet",
                            npz=d / "e.npz", tile=32, overlap=8, dtype=dtype, progress=False)  # fmt: skip
        digests.append(tuple(_sha(d / n) for n in ("e.tif", "c.parquet", "e.npz")))
    assert digests[0] == digests[1] == digests[2]


# ------------------------------------------------------------------ item 8: full disk


def test_too_little_free_space_is_refused_before_anything_is_computed(micro, scene, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=100 * 1024))
    old = _old_outputs(tmp_path / "out")
    calls = []
    monkeypatch.setattr(micro, "forward_tiles", lambda *a, **k: calls.append(1))
    msg = rf"no space left on {tmp_path / 'out'}: about [\d.]+ MiB needed for the embedding "
    with pytest.raises(OSError, match=msg + r"outputs and their temporaries, 0.1 MiB free"):
        micro.embed_rasters(inputs_of(scene), tmp_path / "out" / "e.tif",
                            parquet=tmp_path / "out" / "c.parquet", tile=32, overlap=8,
                            progress=False)  # fmt: skip
    assert not calls and _hidden(tmp_path / "out") == []
    assert {p.name: _sha(p) for p in (tmp_path / "out").iterdir()} == old


def test_a_write_error_of_a_full_disk_says_no_space_and_cleans_up(micro, scene, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    """GDAL reports a full disk in its own words; the run says "no space left"."""
    from rasterio.errors import RasterioIOError

    real = shutil.disk_usage
    out = tmp_path / "out"
    out.mkdir()

    def full(*a, **k):  # room at the start; none left when the COG is written
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4096))
        raise RasterioIOError("TIFFAppendToStrip:Write error at scanline 0")

    monkeypatch.setattr(cog, "gdal_tags", full)
    with pytest.raises(OSError, match=rf"no space left on {out} .*Write error at scanline"):
        micro.embed_rasters(inputs_of(scene), out / "e.tif", npz=out / "e.npz", tile=32,
                            overlap=8, progress=False)  # fmt: skip
    assert list(out.iterdir()) == []


def _unshare_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(
    not _unshare_ok(), reason="needs `unshare -rm` (user namespaces) to mount a small tmpfs"
)
def test_a_really_full_disk_never_kills_the_run_or_leaves_temporaries(ckpt, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    cmd = (f"mount -t tmpfs -o size=2m none {disk} && "
           f"{sys.executable} {DRIVER} fill {ckpt} {tmp_path}")  # fmt: skip
    res = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                         timeout=600, env=CHILD_ENV)  # fmt: skip
    assert res.returncode == 0, (res.returncode, res.stdout[-3000:], res.stderr[-3000:])
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("precheck=")]
    assert len(lines) == 2 * len(SWEEP_KB) + len(FINE_SWEEP_KB), res.stdout
    for ln in lines:
        outcome, left = ln.split(" -> ", 1)[1].split(" | left=")
        if outcome == "OK":
            assert left == "['c.parquet', 'e.npz', 'e.stac.json', 'e.tif']", ln
        else:
            assert outcome.startswith(f"NoSpaceError: [Errno 28] no space left on {disk}"), ln
            assert left == "[]", ln
    outcomes = {ln.split(" -> ")[1].split(" | ")[0].split(":")[0] for ln in lines}
    assert outcomes == {"OK", "NoSpaceError"}  # the sweep crossed the line


# ------------------------------------------------------------------ item 9: signals


def test_ctrl_c_swallowed_inside_gdal_still_aborts_and_keeps_the_old_outputs(
    micro, scene, tmp_path, monkeypatch, interactive_sigint
):
    """rasterio/GDAL can swallow a KeyboardInterrupt raised in one of its callbacks; the
    run must notice the signal anyway, before it replaces anything."""
    real = cog.gdal_tags

    def swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here ...
        except KeyboardInterrupt:
            pass  # ... and the exception dies inside the C library
        return real(*args, **kwargs)

    monkeypatch.setattr(cog, "gdal_tags", swallowing)
    out = tmp_path / "out"
    old = _old_outputs(out)
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        micro.embed_rasters(inputs_of(scene), out / "e.tif", parquet=out / "c.parquet",
                            npz=out / "e.npz", tile=32, overlap=8, progress=False)  # fmt: skip
    assert {p.name: _sha(p) for p in out.iterdir()} == old  # old outputs, no temporaries
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.parametrize("scenario,code", [("sigint", 130), ("sigterm", 143)])
def test_cli_interrupted_during_the_final_write(ckpt, tmp_path, scenario, code):
    old = _old_outputs(tmp_path / "out")
    p = _drive(scenario, ckpt, tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == code, err[-3000:]
    assert "no output was replaced" in err and "Traceback" not in err
    assert {q.name: _sha(q) for q in (tmp_path / "out").iterdir()} == old


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(ckpt, tmp_path, caplog):
    p = _drive("sigkill", ckpt, tmp_path)
    p.communicate(timeout=300)
    out = tmp_path / "out"
    assert p.returncode == -signal.SIGKILL
    left = _hidden(out)
    assert any(".e.tif.l0." in n for n in left), left  # the COG's streamed level, at least
    emb = rs.Embedder.from_pretrained(ckpt, device="cpu")
    scene = {"s2": sorted((tmp_path / "scene").glob("s2_*.tif"))}
    emb.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", [str(f) for f in scene["s2"]])},
                      out / "e.tif", parquet=out / "c.parquet", npz=out / "e.npz", tile=32,
                      overlap=8, progress=False)  # fmt: skip
    assert _hidden(out) == [] and "left by an interrupted run" in caplog.text
    assert sorted(q.name for q in out.iterdir()) == ["c.parquet", "e.npz", "e.stac.json", "e.tif"]


def test_a_second_run_on_the_same_output_is_refused(ckpt, tmp_path):
    p = _drive("wait", ckpt, tmp_path)
    try:
        assert p.stdout.readline().strip() == "waiting"  # the first run holds the output
        emb = rs.Embedder.from_pretrained(ckpt, device="cpu")
        files = sorted(str(f) for f in (tmp_path / "scene").glob("s2_*.tif"))
        with pytest.raises(RuntimeError, match=r"output .*e\.tif is in use by another process"):
            emb.embed_rasters({"s2": rs.RasterInput("sentinel2_l2a", files)},
                              tmp_path / "out" / "e.tif", tile=32, overlap=8, progress=False)  # fmt: skip
        (tmp_path / "go").touch()
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    finally:
        (tmp_path / "go").touch()
        p.kill()
    assert sorted(q.name for q in (tmp_path / "out").iterdir()) == [
        "c.parquet",
        "e.npz",
        "e.stac.json",
        "e.tif",
    ]
