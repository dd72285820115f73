"""Multi-node, simulated: 4 gloo processes on this CPU as 2 "nodes" x 2 ranks, launched the
way a multi-node launcher leaves them (environment variables: ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``/``NODE_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), ``python -m rsfm_train.pretrain`` at ZeRO 2: a few steps with a
checkpoint, then a resume on the same 2 x 2 layout that matches the run straight through
(docs/training.md, "Multi-node"). Slow: two 4-process launches of the same CLI the
default suite runs on 2 processes (test_engine_dist_pretrain_command)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .engine_common import micro_overrides, read_metrics

REPO = Path(__file__).resolve().parents[2]
NODES, PER_NODE = 2, 2


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(args: list[str]) -> None:
    """One process per (node, local rank), each with the variables its launcher sets."""
    port, world = _port(), NODES * PER_NODE
    procs = []
    for node in range(NODES):
        for local in range(PER_NODE):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
            env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
            env.update(
                RANK=str(node * PER_NODE + local), LOCAL_RANK=str(local),
                WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(PER_NODE),
                GROUP_RANK=str(node), NODE_RANK=str(node),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
            )  # fmt: skip
            cmd = [sys.executable, "-m", "rsfm_train.pretrain", *args]
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))  # fmt: skip
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    bad = [(i, o[-3000:]) for i, (p, o) in enumerate(zip(procs, outs)) if p.returncode != 0]
    assert not bad, bad


@pytest.mark.slow
def test_multinode_2x2_gloo_runs_and_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    args = ["--config", "tiny_cpu", "--no-progress",
            *micro_overrides(run, 2, optim__total_steps=3, run__ckpt_every=1, run__keep_ckpts=3)]  # fmt: skip
    _launch(args)
    first = read_metrics(run)
    ckpt = run / "checkpoints" / "step_00000003"
    ranks = sorted(p.name for p in ckpt.glob("rsfm_rank_*.safetensors"))
    assert ranks == [f"rsfm_rank_{r:05d}.safetensors" for r in range(NODES * PER_NODE)]
    shutil.rmtree(ckpt)  # as if the job died before step 3 was saved
    _launch([*args, "--resume"])
    again = read_metrics(run)
    assert [r["step"] for r in first] == [1, 2, 3] == [r["step"] for r in again]
    assert [r["loss"] for r in again] == [r["loss"] for r in first]  # bit-exact on 4 ranks
    assert first[0]["samples"] == NODES * PER_NODE * 2  # every rank's micro-batch of 2
