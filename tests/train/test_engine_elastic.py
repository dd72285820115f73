"""Resuming a checkpoint on another world size: allowed where the optimizer state is not
partitioned (fp32 ZeRO-0: every rank saved and loads the full state), refused with what
to do otherwise (ZeRO >= 1, bf16); the data positions are re-split by the loader
(tests/train/test_data_elastic.py). The end-to-end run (2 gloo processes, then 1 with
other data.workers) is ``slow``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rsfm_train.checkpoint import CheckpointError, read_positions, world_change_problem

from .engine_common import micro_config, micro_overrides, read_metrics

REPO = Path(__file__).resolve().parents[2]


def _fake_ckpt(path: Path, world: int, stage: int, *files: str) -> Path:
    path.mkdir(parents=True)
    (path / "rsfm_state.json").write_text(json.dumps({"step": 2, "world_size": world,
                                                      "zero_stage": stage}))  # fmt: skip
    for f in files:
        (path / f).write_bytes(b"")
    return path


def test_world_change_is_allowed_only_without_optimizer_partitions(tmp_path):
    z0 = _fake_ckpt(tmp_path / "z0", 2, 0, "mp_rank_00_model_states.pt")
    info = json.loads((z0 / "rsfm_state.json").read_text())
    assert world_change_problem(z0, info, 1) is None and world_change_problem(z0, info, 3) is None
    z2 = _fake_ckpt(tmp_path / "z2", 2, 2, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    info = json.loads((z2 / "rsfm_state.json").read_text())
    assert world_change_problem(z2, info, 2) is None  # same world size: always fine
    msg = world_change_problem(z2, info, 1)
    assert "ZeRO stage 2" in msg and "resume on 2 ranks" in msg and "zero_stage=0" in msg
    bf16 = _fake_ckpt(tmp_path / "bf16", 2, 0, "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt")
    msg = world_change_problem(bf16, json.loads((bf16 / "rsfm_state.json").read_text()), 4)
    assert "bf16" in msg and "deepspeed.bf16=false" in msg


def test_check_resume_refuses_a_partitioned_checkpoint_on_another_world_size(tmp_path):
    from rsfm_train.engine import check_resume

    z1 = _fake_ckpt(tmp_path / "z1", 2, 1, "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    cfg = micro_config(tmp_path / "run", 1)
    with pytest.raises(CheckpointError, match="ZeRO stage 1.*resume on 2 ranks"):
        check_resume(z1, cfg, world_size=1)
    z0 = _fake_ckpt(tmp_path / "z0", 2, 0)
    check_resume(z0, micro_config(tmp_path / "run0", 0), world_size=1)  # no shapes: passes


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _check(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])


@pytest.mark.slow
def test_two_gloo_ranks_resume_as_one_process_and_back(tmp_path):
    """`rsfm pretrain` on 2 processes (ZeRO-0 fp32, 1 data worker each) to a checkpoint at
    step 2, `--resume` on 1 process with data.workers=2 to step 4, then on 2 again."""
    run = tmp_path / "run"
    over = micro_overrides(run, 0, optim__total_steps=6, run__ckpt_every=2, run__keep_ckpts=3)
    cli = ["-m", "rsfm_train.pretrain", "--config", "tiny_cpu", "--no-progress"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _check(subprocess.run([*two, *cli, "--max-steps", "2", *over, "data.workers=0"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=600))  # fmt: skip
    ckpt = run / "checkpoints" / "step_00000002"
    assert json.loads((ckpt / "rsfm_state.json").read_text())["world_size"] == 2
    res = subprocess.run([sys.executable, *cli, "--resume", "--max-steps", "4", *over,
                          "data.workers=2"], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    _check(res)
    assert "elastic" in res.stdout + res.stderr
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["samples"] for r in recs] == [4, 4, 2, 2]  # 2 ranks x 2, then 1 rank x 2
    final = run / "checkpoints" / "step_00000004"
    info = json.loads((final / "rsfm_state.json").read_text())
    assert info["world_size"] == 1 and info["samples"] == 12
    assert not (final / "rsfm_rank_00001.safetensors").exists()
    (pos,) = read_positions(final)
    assert (pos.world_size, pos.workers, pos.batches) == (1, 2, 2)
    # and back to 2 ranks (rank 1 has no file in a 1-rank checkpoint: seeded RNG, re-split data)
    _check(subprocess.run([*two, *cli, "--resume", *over, "data.workers=1"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=600))  # fmt: skip
    assert [r["samples"] for r in read_metrics(run)] == [4, 4, 2, 2, 4, 4]
    info = json.loads((run / "checkpoints" / "step_00000006" / "rsfm_state.json").read_text())
    assert info["world_size"] == 2 and info["samples"] == 20
