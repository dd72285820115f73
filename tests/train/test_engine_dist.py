"""Two CPU processes (torchrun, gloo, OMP_NUM_THREADS=1) at ZeRO 0-3: the NaN guard
skips on every rank, teachers stay identical across ranks, ZeRO 3 trains like ZeRO 0,
checkpoints hold one RNG/data file per rank, and resume is exact on two ranks.

The default suite runs the documented two-rank launch (``test_engine_dist_pretrain_command``,
ZeRO 2) and ``test_dist_gather``; the ZeRO 0-3 sweep behind ``report`` (several 2-process
runs) is ``slow`` (``pytest -m slow``). One process covers the same properties per rank
(tests/train/test_engine_train.py, test_engine_resume.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .engine_common import micro_overrides, read_metrics

WORKER = Path(__file__).with_name("engine_dist_worker.py")
REPO = Path(__file__).resolve().parents[2]


def _torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args,
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("engine_dist")
    _torchrun(str(WORKER), str(root))
    return json.loads((root / "report.json").read_text())


def test_engine_dist_pretrain_command(tmp_path):
    """The documented launch: torchrun -m rsfm_train.pretrain, 2 CPU processes, ZeRO 2."""
    run = tmp_path / "run"
    over = micro_overrides(run, 2, optim__total_steps=2, run__ckpt_every=1, run__keep_ckpts=1)
    _torchrun("-m", "rsfm_train.pretrain", "--config", "tiny_cpu", "--no-progress", *over)
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    ckpt = run / "checkpoints" / "step_00000002"
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "rsfm_rank_00001.safetensors").is_file()


def _same(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("run", ["z0", "z1", "z2", "z3", "z2_resumed", "z3_resumed"])
def test_engine_dist_ranks_agree(report, run):
    r = report[run]
    a, b = r["ranks"]
    assert a == b, "the two ranks' teachers or counters differ"
    assert a["step"] == 3 and len(r["losses"]) == 3
    gas = 2 if run == "z1" else 1
    assert a["samples"] == 3 * 2 * 2 * gas  # steps * ranks * micro_batch * grad_accum
    assert (
        "rsfm_rank_00000.safetensors" in r["files"] and "rsfm_rank_00001.safetensors" in r["files"]
    )


@pytest.mark.slow
def test_engine_dist_nan_on_one_rank_skips_the_step_on_all(report):
    r = report["z2"]
    assert r["skipped"] == [0.0, 1.0, 0.0]
    assert math.isnan(r["losses"][1]) and math.isfinite(r["losses"][2])
    assert all(x["skipped"] == 1 for x in r["ranks"])


@pytest.mark.slow
def test_engine_dist_resume_is_exact(report):
    assert _same(report["z2"]["losses"], report["z2_resumed"]["losses"])
    assert report["z2"]["ranks"] == report["z2_resumed"]["ranks"]


@pytest.mark.slow
def test_engine_dist_zero3_resume_is_exact(report):
    """ZeRO-3 on 2 ranks: the partitioned teacher is saved whole and each rank reloads
    its own partition; the resumed run matches the straight one to the bit."""
    assert _same(report["z3"]["losses"], report["z3_resumed"]["losses"])
    assert report["z3"]["ranks"] == report["z3_resumed"]["ranks"]


@pytest.mark.slow
def test_engine_dist_zero3_trains_like_zero0(report):
    z0, z3 = report["z0"], report["z3"]
    assert z0["losses"][0] == pytest.approx(z3["losses"][0], rel=1e-6)
    assert z3["losses"] == pytest.approx(z0["losses"], rel=1e-4)
    assert z3["ranks"][0]["teacher"] == pytest.approx(z0["ranks"][0]["teacher"], rel=1e-4, abs=1e-5)
