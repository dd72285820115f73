"""Peak resident memory per rank of the pretraining engine at ZeRO-3 on CPU processes:
after building the ``Trainer`` (student, EMA teacher, DeepSpeed engine) and after one
optimizer step, for ``--model`` (default rsfm_large, the ``large_zero3`` config with
small synthetic views).

    python -m benchmarks.zero3_memory                        # this checkout, 2 processes
    python -m benchmarks.zero3_memory --against abf5231      # and that revision's engine

Each case is one ``torchrun --standalone --nproc_per_node N`` launch (gloo,
``OMP_NUM_THREADS=1``); every rank reads its own peak RSS (VmHWM, reset at start) and
rank 0 prints them. ``--against REF`` runs revision ``REF``'s ``train/`` package
(``git archive`` into a temporary folder, first on ``PYTHONPATH``; ``rsfm_core`` is this
checkout's) in a separate launch first: before/after numbers of one session.

Run it with ``MALLOC_MMAP_THRESHOLD_=131072`` to measure live memory: with glibc's default
allocator the peak also counts freed blocks the heap keeps, which building a model
module by module under ``deepspeed.zero.Init`` leaves many of (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_BUCKETS = (
    "{zero_optimization: {reduce_bucket_size: 1000000, allgather_bucket_size: 1000000,"
    " stage3_prefetch_bucket_size: 1000000, stage3_param_persistence_threshold: 10000,"
    " overlap_comm: false}}"
)


def _overrides(args: argparse.Namespace, out_dir: str) -> list[str]:
    return [
        f"model.name={args.model}",
        "data.source=synthetic",
        "data.modalities=[s2, s1]",
        f"data.crop_size={args.crop}",
        "data.dates_per_view=2",
        "data.modality_dropout=0.0",
        "data.workers=0",
        "data.synthetic_samples=8",
        "deepspeed.micro_batch=1",
        "deepspeed.grad_accum=1",
        f"deepspeed.bf16={str(args.bf16).lower()}",
        f"deepspeed.extra={CPU_BUCKETS}",
        "optim.warmup_steps=1",
        "optim.total_steps=10",
        f"run.out_dir={out_dir}",
        "run.ckpt_every=0",
        "run.log_every=1",
    ]


def _worker(args: argparse.Namespace) -> None:
    from benchmarks import _common as C

    C.reset_peak_rss()
    import torch.distributed as torch_dist
    from rsfm_train.config import load_config
    from rsfm_train.data import make_loader
    from rsfm_train.engine import Trainer

    with tempfile.TemporaryDirectory(prefix="rsfm_z3mem_") as tmp:
        cfg = load_config("large_zero3", _overrides(args, tmp))
        tr = Trainer(cfg, run_dir=tmp, progress=False)
        built = C.peak_rss_mb()
        tr.fit(make_loader(cfg, tr.rank, tr.world), max_steps=args.steps)
        mine = {"rank": tr.rank, "built_peak_mb": built, "step_peak_mb": C.peak_rss_mb(),
                "rss_mb": C.rss_mb()}  # fmt: skip
        ranks: list = [None] * tr.world
        torch_dist.all_gather_object(ranks, mine)
        n = sum(int(getattr(p, "ds_numel", p.numel())) for p in tr.student.parameters())
        tr.close()
    if ranks[0] is not None and mine["rank"] == 0:
        out = {"model": args.model, "params": n, "world": len(ranks), "ranks": ranks}
        Path(args.json).write_text(json.dumps(out))


def _launch(args: argparse.Namespace, out: Path, pythonpath: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(args.nproc), "-m", "benchmarks.zero3_memory", "--worker", "--json", str(out),
           "--model", args.model, "--crop", str(args.crop), "--steps", str(args.steps)]  # fmt: skip
    if args.bf16:
        cmd.append("--bf16")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-4000:]}")
    return json.loads(out.read_text())


def _show(name: str, r: dict) -> None:
    for x in r["ranks"]:
        print(f"{name:>8} rank {x['rank']}: peak after build {x['built_peak_mb'] / 1024:6.2f} GiB, "
              f"after {r.get('steps', 1)} step(s) {x['step_peak_mb'] / 1024:6.2f} GiB")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="rsfm_large")
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 modules (default: fp32 on CPU)")
    p.add_argument("--against", help="also run this git revision's engine (before)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="rsfm_z3mem_") as tmp:
        if args.against:
            tar = subprocess.run(["git", "archive", args.against, "train"], cwd=REPO,
                                 check=True, capture_output=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", tmp], input=tar, check=True)
            (Path(tmp) / "rsfm_train").symlink_to(Path(tmp) / "train")
            results["before"] = _launch(args, Path(tmp) / "before.json", tmp)
            _show("before", results["before"])
        results["after"] = _launch(args, Path(tmp) / "after.json", None)
        _show("after", results["after"])
    print(
        f"{args.model}: {results['after']['params'] / 1e6:.1f}M parameters, "
        f"{args.nproc} processes, ZeRO-3, {'bf16' if args.bf16 else 'fp32'}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
