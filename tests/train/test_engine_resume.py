"""Exact resume, atomic checkpoints and export (one process, DeepSpeed on the CPU).

For ZeRO 0-3: 2N optimizer steps straight equal N steps + save + a fresh engine built from
the checkpoint + N steps, to the last bit (fp32, deterministic algorithms): losses,
student, teacher and prototypes. The straight runs are then exported (ZeRO 0 and 3) and
the exported encoder must reproduce the trained student's outputs exactly.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
import torch

from .engine_common import (  # noqa: F401 (restore_determinism: an autouse fixture)
    assert_states_equal,
    full_state,
    micro_config,
    read_metrics,
    restore_determinism,
    state_copy,
)

N = 2  # steps before and after the restart


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_resume")


def _eval_batch(cfg):
    from rsfm_train.data import make_loader

    pair = next(iter(make_loader(cfg, 0, 1, seed=123)))
    return pair.view1


@functools.cache
def _runs(stage: int, root: str) -> dict:
    """Straight (A) and interrupted (B) runs of ``2N`` steps at ZeRO ``stage``."""
    from rsfm_train.data import make_loader
    from rsfm_train.engine import Trainer

    out = {}
    cfg = micro_config(f"{root}/z{stage}_a", stage, optim__total_steps=2 * N, run__ckpt_every=N)
    a = Trainer(cfg, progress=False)
    a.fit(make_loader(cfg, 0, 1))
    batch = _eval_batch(cfg)
    with torch.no_grad():
        out["a_dense"] = a.student.encoder.eval()(batch).dense.clone()
    out["a"] = (full_state(a.student), full_state(a.teacher.module), state_copy(a.loss_fn))
    out["a_metrics"], out["a_dir"], out["cfg"], out["batch"] = (
        read_metrics(cfg.run.out_dir),
        cfg.run.out_dir,
        cfg,
        batch,
    )
    a.close()

    cfg = micro_config(f"{root}/z{stage}_b", stage, optim__total_steps=2 * N, run__ckpt_every=N)
    b = Trainer(cfg, progress=False)
    b.fit(make_loader(cfg, 0, 1), max_steps=N)
    b.close()
    b = Trainer(cfg, progress=False)  # a fresh engine, as after a kill
    position = b.load()
    b.fit(make_loader(cfg, 0, 1, start=position))
    out["b"] = (full_state(b.student), full_state(b.teacher.module), state_copy(b.loss_fn))
    out["b_metrics"], out["b_state"] = read_metrics(cfg.run.out_dir), b.state
    b.close()
    return out


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_engine_resume_is_bit_exact(stage, workdir):
    r = _runs(stage, str(workdir))
    la = [m["loss"] for m in r["a_metrics"]]
    lb = [m["loss"] for m in r["b_metrics"]]
    assert len(la) == 2 * N and la == lb, (la, lb)
    assert [m["lr"] for m in r["a_metrics"]] == [m["lr"] for m in r["b_metrics"]]
    for sa, sb in zip(r["a"], r["b"]):  # student, teacher, loss prototypes
        assert_states_equal(sa, sb)
    assert r["b_state"].step == 2 * N and r["b_state"].samples == 2 * N * 2
    assert la[-1] != la[0] and r["a_metrics"][-1]["lr"] > 0  # it did train


@pytest.mark.parametrize("stage", [0, 3])
def test_engine_export_reproduces_the_student(stage, workdir, tmp_path):
    from rsfm_train.export import export

    from rsfm_core.model import load_pretrained

    r = _runs(stage, str(workdir))
    out = export(r["a_dir"], tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    model = load_pretrained(out)
    with torch.no_grad():
        dense = model(r["batch"]).dense
    assert torch.equal(dense, r["a_dense"])
    teacher = load_pretrained(export(r["a_dir"], tmp_path / "teacher", weights="teacher"))
    assert not torch.equal(next(teacher.parameters()), next(model.parameters()))


def test_engine_export_of_zero0_does_not_import_deepspeed(workdir, tmp_path):
    r = _runs(0, str(workdir))
    code = (
        "import sys; from rsfm_train.export import export; "
        f"export({str(r['a_dir'])!r}, {str(tmp_path / 'e')!r}); "
        "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_engine_crash_mid_save_resumes_from_the_previous_checkpoint(workdir):
    from rsfm_train.checkpoint import LATEST, find_latest, list_complete
    from rsfm_train.data import make_loader
    from rsfm_train.engine import Trainer
    from rsfm_train.pretrain import resolve_resume

    cfg = micro_config(
        workdir / "crash", 0, run__ckpt_every=1, run__keep_ckpts=2, optim__total_steps=5
    )
    tr = Trainer(cfg, progress=False)
    loader = make_loader(cfg, 0, 1)
    tr.fit(loader, max_steps=3)  # complete checkpoints 1, 2, 3; keep 2 -> {2, 3}
    root = tr.ckpt_dir
    assert [s for s, _ in list_complete(root)] == [2, 3]

    def crash(tmp_dir):  # DeepSpeed's and our files are written; COMPLETE is not
        assert any(tmp_dir.glob("*model_states.pt")) and any(tmp_dir.glob("rsfm_rank_*"))
        raise KeyboardInterrupt("killed during save")

    tr.before_commit = crash
    with pytest.raises(KeyboardInterrupt):
        tr.fit(loader, max_steps=4)
    tr.close()
    assert (root / "step_00000004.partial").is_dir()
    assert (root / LATEST).read_text().strip() == "step_00000003"
    assert find_latest(root).name == "step_00000003"
    (root / LATEST).write_text("step_00000004\n")  # even a stale pointer is not trusted
    assert find_latest(root).name == "step_00000003"

    with pytest.raises(RuntimeError, match="already holds checkpoints"):
        resolve_resume("no", root)
    tr = Trainer(cfg, progress=False)
    pos = tr.load(resolve_resume("auto", root))
    assert tr.state.step == 3 and pos.batches == 3
    tr.fit(make_loader(cfg, 0, 1, start=pos), max_steps=4)
    tr.close()
    assert [s for s, _ in list_complete(root)] == [3, 4]
    assert not (root / "step_00000004.partial").exists()  # stale partial folder cleaned up
    info = json.loads((root / "step_00000004" / "rsfm_state.json").read_text())
    assert info["step"] == 4 and info["world_size"] == 1 and info["zero_stage"] == 0
