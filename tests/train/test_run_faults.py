"""Pretraining runs under faults: two runs on one folder, a refused resume, kills during
saving and pruning, a resume's metrics, a full disk (issue 16, items 1, 2, 4, 5, 6).

Checkpoint-folder tests use hand-made folders (no DeepSpeed); the others run micro
DeepSpeed engines on the CPU (a fraction of a second per step).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .engine_common import (  # noqa: F401 (restore_determinism: an autouse fixture)
    micro_config,
    micro_overrides,
    read_metrics,
    restore_determinism,
)

_DS_FILES = ("mp_rank_00_model_states.pt", "rsfm_teacher.safetensors", "rsfm_loss.safetensors",
             "rsfm_rank_00000.safetensors")  # fmt: skip


def _fake_ckpt(root: Path, step: int) -> Path:
    """A checkpoint folder as a save writes it (contents are placeholders)."""
    d = root / f"step_{step:08d}"
    d.mkdir(parents=True)
    for name in _DS_FILES:
        (d / name).write_bytes(bytes(100 + step))
    (d / "rsfm_state.json").write_text(json.dumps({"step": step, "world_size": 1}))
    files = {f.name: f.stat().st_size for f in d.iterdir()}
    (d / "COMPLETE").write_text(json.dumps({"tag": d.name, "step": step, "files": files}))
    return d


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ------------------------------------------------------------- item 4: resume and prune


def test_resume_takes_the_newest_checkpoint_whose_files_are_all_there(tmp_path, caplog):
    from rsfm_train.checkpoint import LATEST, find_latest

    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _fake_ckpt(root, step)
    # killed between renaming step 3 into place and updating the pointer
    (root / LATEST).write_text("step_00000002\n")
    assert find_latest(root).name == "step_00000003"
    # step 3 lost a file (a pruning or copy gone wrong): the previous one, with a warning
    (root / "step_00000003" / "rsfm_teacher.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="rsfm_train"):
        assert find_latest(root).name == "step_00000002"
    assert "step_00000003" in caplog.text and "rsfm_teacher.safetensors" in caplog.text
    # a truncated file is caught by its recorded size
    with open(root / "step_00000002" / "mp_rank_00_model_states.pt", "r+b") as f:
        f.truncate(10)
    assert find_latest(root).name == "step_00000001"


def test_prune_killed_midway_leaves_no_complete_looking_incomplete_folder(tmp_path, monkeypatch):
    from rsfm_train import checkpoint as ck

    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _fake_ckpt(root, step)
    real = shutil.rmtree

    def killed_rmtree(path, *a, **k):  # deletes one file, then the process dies
        next(p for p in sorted(Path(path).iterdir()) if p.name != "COMPLETE").unlink()
        raise KeyboardInterrupt("killed while pruning")

    monkeypatch.setattr(ck.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        ck.prune(root, keep=1)
    monkeypatch.setattr(ck.shutil, "rmtree", real)
    for _, folder in ck.list_complete(root):  # whatever still says COMPLETE is whole
        assert _files(folder) >= {*_DS_FILES, "rsfm_state.json"}, folder
    assert ck.find_latest(root).name == "step_00000003"
    ck.prune(root, keep=1)  # the next prune finishes the job
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003"]


# ---------------------------------------------------------------- engine-based tests


def _trainer(cfg):
    from rsfm_train.engine import Trainer

    return Trainer(cfg, progress=False)


def test_second_run_on_one_folder_is_refused_and_a_killed_one_does_not_block(tmp_path, capsys):
    from rsfm_core.cli import main

    cfg = micro_config(tmp_path / "run", 0)
    a = _trainer(cfg)
    try:
        with pytest.raises(RuntimeError, match=r"in use by another process \(pid \d+"):
            _trainer(cfg)
        rc = main(["pretrain", "--config", "tiny_cpu", "--no-progress", "--max-steps", "1",
                   *micro_overrides(tmp_path / "run", 0)])  # fmt: skip
        assert rc == 2 and "in use by another process" in capsys.readouterr().err
        assert not (tmp_path / "run" / "config.yaml").exists()  # the refused run wrote nothing
    finally:
        a.close()
    # a process holding the lock is killed: its lock dies with it
    lock = tmp_path / "run" / ".rsfm_run.lock"
    code = (
        "import os, signal, sys; from rsfm_core.files import exclusive_lock\n"
        f"with exclusive_lock({str(lock)!r}, 'run'):\n"
        "    print('locked', flush=True); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == -signal.SIGKILL and "locked" in res.stdout, res.stderr
    b = _trainer(cfg)  # a restart after the kill
    b.close()


def test_refused_resume_leaves_the_run_folder_as_it_was(tmp_path):
    from rsfm_train.checkpoint import CheckpointError
    from rsfm_train.config import load_config
    from rsfm_train.export import export
    from rsfm_train.pretrain import run_pretrain

    run = tmp_path / "run"
    cfg = micro_config(run, 0, optim__total_steps=2, run__ckpt_every=1)
    run_pretrain(cfg, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    wider = load_config(
        "tiny_cpu",
        micro_overrides(run, 0, optim__total_steps=3, run__resume="auto",
                        model__overrides="{dim: 64, depth: 2, heads: 2, hyper_dim: 16}"),
    )  # fmt: skip
    with pytest.raises(CheckpointError, match=r"other shapes.*dim: 32 -> 64"):
        run_pretrain(wider, progress=False)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # config.yaml, encoder_config.json, metrics: untouched
    assert export(run, tmp_path / "model").is_dir()  # the run can still be exported


def test_resume_falls_back_when_the_newest_checkpoint_is_incomplete(tmp_path, caplog):
    from rsfm_train.data import make_loader
    from rsfm_train.pretrain import resolve_resume

    cfg = micro_config(tmp_path / "run", 0, run__ckpt_every=1, run__keep_ckpts=0)
    tr = _trainer(cfg)
    tr.fit(make_loader(cfg, 0, 1), max_steps=3)
    tr.close()
    (tr.ckpt_dir / "step_00000003" / "mp_rank_00_model_states.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="rsfm_train"):
        ckpt = resolve_resume("auto", tr.ckpt_dir)
    assert ckpt.name == "step_00000002" and "mp_rank_00_model_states.pt is missing" in caplog.text
    tr = _trainer(cfg)
    pos = tr.load(ckpt)
    assert tr.state.step == 2 and pos.batches == 2
    tr.fit(make_loader(cfg, 0, 1, start=pos), max_steps=3)  # and training goes on
    tr.close()
    # item 5: the killed run had logged step 3 already; the resumed run logs it once more
    # in its place, so there is one record per optimizer step
    assert [r["step"] for r in read_metrics(tr.run_dir)] == [1, 2, 3]


def test_checkpoint_files_are_fsynced_before_complete(tmp_path, monkeypatch):
    from rsfm_train.data import make_loader

    synced: set[str] = set()
    real_fsync = os.fsync

    def fsync(fd):
        synced.add(os.path.realpath(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    seen = {}

    def before_commit(tmp_dir):  # all files written, COMPLETE not yet
        seen.update({p.name: str(p.resolve()) in synced for p in tmp_dir.iterdir()})

    cfg = micro_config(tmp_path / "run", 0, run__ckpt_every=1)
    tr = _trainer(cfg)
    tr.before_commit = before_commit
    tr.fit(make_loader(cfg, 0, 1), max_steps=1)
    tr.close()
    assert seen and all(seen.values()), seen
    complete = json.loads((tr.ckpt_dir / "step_00000001" / "COMPLETE").read_text())
    assert set(complete["files"]) == set(seen)  # the marker lists every file with its size


def test_metrics_have_one_record_per_step_and_the_skip_log_names_that_step(tmp_path, caplog):
    from rsfm_train.data import make_loader

    cfg = micro_config(tmp_path / "run", 0, run__ckpt_every=2, run__max_nonfinite_skips=3)
    tr = _trainer(cfg)
    loader = make_loader(cfg, 0, 1)
    tr.fit(loader, max_steps=2)

    def nan(step, inputs):
        inputs.student_dense = inputs.student_dense * float("nan")
        return inputs

    tr.fault_hook = nan
    with caplog.at_level(logging.ERROR, logger="rsfm_train"):
        tr.fit(loader, max_steps=3)  # step 3 is skipped; the final save is removed below
    tr.close()
    shutil.rmtree(tr.ckpt_dir / "step_00000003")  # as if killed before saving step 3
    recs = read_metrics(tr.run_dir)
    skipped = [r["step"] for r in recs if r["skipped"]]
    assert skipped == [3] and "NON-FINITE loss or gradient at step 3 " in caplog.text
    tr = _trainer(cfg)
    pos = tr.load()
    tr.fit(make_loader(cfg, 0, 1, start=pos), max_steps=4)
    tr.close()
    recs = read_metrics(tr.run_dir)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert not recs[2]["skipped"]  # step 3's record is the resumed run's


# ------------------------------------------------------------------ item 6: full disk


def test_checkpoint_save_checks_free_space_first(tmp_path, monkeypatch):
    from rsfm_train.data import make_loader

    cfg = micro_config(tmp_path / "run", 0, run__ckpt_every=1)
    tr = _trainer(cfg)
    loader = make_loader(cfg, 0, 1)
    tr.fit(loader, max_steps=1)
    size = sum(f.stat().st_size for f in (tr.ckpt_dir / "step_00000001").iterdir())
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=size // 2))
    try:
        msg = rf"no space left on {re.escape(str(tr.ckpt_dir))}: about [\d.]+ MiB needed for "
        with pytest.raises(OSError, match=msg + r"checkpoint step_00000002, [\d.]+ MiB free"):
            tr.fit(loader, max_steps=2)
    finally:
        tr.close()
    assert sorted(p.name for p in tr.ckpt_dir.iterdir()) == ["latest_complete", "step_00000001"]


_FULL_DISK = """
import sys, torch
from pathlib import Path
from rsfm_train import checkpoint as ck

root = Path(sys.argv[1]) / "checkpoints"

class Engine:  # what save_checkpoint needs of DeepSpeed's engine; writes a 4 MB file
    device = torch.device("cpu")
    def save_checkpoint(self, save_dir, tag, save_latest):
        (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"module": torch.zeros(10**6)}, Path(save_dir) / tag / "mp_rank_00_model_states.pt")
    def zero_optimization_stage(self):
        return 0

ck.check_free_space = lambda *a, **k: None  # the disk fills up during the save
try:
    ck.save_checkpoint(Engine(), root, ck.TrainState(step=1), torch.nn.Linear(2, 2),
                       torch.nn.Linear(2, 2), None)
    print("SAVED")
except Exception as e:
    print(f"{type(e).__name__}: {e}")
print("LEFT", sorted(p.name for p in root.iterdir()))
"""


def _unshare_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    res = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return res.returncode == 0


@pytest.mark.skipif(
    not _unshare_ok(), reason="needs `unshare -rm` (user namespaces) to mount a small tmpfs"
)
def test_checkpoint_save_on_a_really_full_disk_says_no_space(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    (tmp_path / "full_disk.py").write_text(textwrap.dedent(_FULL_DISK))
    cmd = (f"mount -t tmpfs -o size=2m none {mnt} && "
           f"{sys.executable} {tmp_path / 'full_disk.py'} {mnt}")  # fmt: skip
    res = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    out = res.stdout
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"NoSpaceError: [Errno 28] no space left on {mnt}/checkpoints" in out, out
    assert "LEFT []" in out, out  # no half-written .partial folder left behind
