"""What `rsfm pretrain` no longer prints or does on one process: per-scene INFO lines,
DeepSpeed's scheduler warning, the silent JIT build of DeepSpeed's shared-memory op."""

from __future__ import annotations

import pytest


def test_pretrain_quiets_scene_lines_and_the_deepspeed_scheduler_warning():
    import logging

    from rsfm_train.pretrain import quiet_logs

    quiet_logs()
    assert not logging.getLogger("rsfm_core.synthetic.scene").isEnabledFor(logging.INFO)
    ds = logging.getLogger("DeepSpeed")
    rec = ds.makeRecord(
        "DeepSpeed", logging.WARNING, "f", 1,
        "Attempting to get learning rate from scheduler before it has started", None, None,
    )  # fmt: skip
    assert not ds.filter(rec)
    rec.msg = "something else"
    assert ds.filter(rec)


def test_one_process_pretraining_does_not_build_deepspeeds_shm_op(monkeypatch):
    ops = pytest.importorskip("deepspeed.ops")
    from deepspeed.comm.torch import build_shm_op
    from rsfm_train.pretrain import skip_shm_op_when_alone

    compatible = ops.__compatible_ops__
    monkeypatch.setitem(compatible, "deepspeed_shm_comm", compatible.get("deepspeed_shm_comm"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not skip_shm_op_when_alone()  # several processes keep (and build) it
    monkeypatch.delenv("WORLD_SIZE")
    assert skip_shm_op_when_alone()
    assert build_shm_op() is None  # DeepSpeed's own check: no JIT compile, no op
