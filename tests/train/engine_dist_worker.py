"""Worker of test_engine_dist.py, run by ``torchrun --nproc_per_node 2`` (gloo, CPU).

For each ZeRO stage a micro run of 3 optimizer steps; rank 0 writes a JSON report:
losses and skip flags per step, and per rank a fingerprint of the teacher and the step
counters (all gathered), so the test can check that ranks agree.

- ZeRO 0 and 3: plain runs (compared with each other: same data, same updates).
- ZeRO 1: gradient accumulation over 2 micro-batches.
- ZeRO 2: rank 1 alone gets a NaN loss at step index 1 (the all-reduced guard must skip
  the step on both ranks), and the run is interrupted after step 1 and resumed from its
  checkpoint in fresh engines, to be compared with the same run straight through.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.train.engine_common import micro_config, read_metrics  # noqa: E402


def _fingerprint(module: torch.nn.Module) -> list[float]:
    """Per-tensor sums of the teacher's full state (a collective at ZeRO-3)."""
    from rsfm_train.teacher import teacher_state_dict

    return [float(v.double().sum()) for v in teacher_state_dict(module).values()]


def _nan_on_rank1_step1(rank: int):
    def hook(step, inputs):
        if rank == 1 and step == 1:
            inputs.student_dense = inputs.student_dense * float("nan")
        return inputs

    return hook


def _run(
    root: Path, name: str, stage: int, steps: int, resume_at: int | None = None, **extra
) -> dict:
    from rsfm_train.data import make_loader
    from rsfm_train.engine import Trainer

    cfg = micro_config(root / name, stage, optim__total_steps=3, **extra)
    tr = Trainer(cfg, progress=False)
    rank = tr.rank
    if stage == 2:
        tr.fault_hook = _nan_on_rank1_step1(rank)
    if resume_at is not None:
        tr.fit(make_loader(cfg, rank, tr.world), max_steps=resume_at)
        tr.close()
        tr = Trainer(cfg, progress=False)
        if stage == 2:
            tr.fault_hook = _nan_on_rank1_step1(rank)
        pos = tr.load()
        tr.fit(make_loader(cfg, rank, tr.world, start=pos), max_steps=steps)
    else:
        tr.fit(make_loader(cfg, rank, tr.world), max_steps=steps)
    mine = {"teacher": _fingerprint(tr.teacher.module), "step": tr.state.step,
            "skipped": tr.state.nonfinite_total, "samples": tr.state.samples}  # fmt: skip
    ranks: list = [None] * tr.world
    torch_dist.all_gather_object(ranks, mine)
    files = sorted(p.name for p in (tr.ckpt_dir / f"step_{steps:08d}").iterdir())
    tr.close()
    recs = read_metrics(root / name) if rank == 0 else []
    return {"losses": [r["loss"] for r in recs], "skipped": [r["skipped"] for r in recs],
            "ranks": ranks, "files": files}  # fmt: skip


def main() -> None:
    root = Path(sys.argv[1])
    report = {
        "z0": _run(root, "z0", 0, 3),
        "z3": _run(root, "z3", 3, 3, run__ckpt_every=1),
        "z3_resumed": _run(root, "z3r", 3, 3, resume_at=1, run__ckpt_every=1),
        "z1": _run(root, "z1", 1, 3, deepspeed__grad_accum=2),
        "z2": _run(root, "z2", 2, 3, run__ckpt_every=1),
        "z2_resumed": _run(root, "z2r", 2, 3, resume_at=1, run__ckpt_every=1),
    }
    if torch_dist.get_rank() == 0:
        (root / "report.json").write_text(json.dumps(report))
    torch_dist.barrier()
    torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
