"""Pretraining throughput on one device: samples/s, tokens/s, model TFLOP/s and MFU of full
training steps (student forward + backward, EMA teacher forward, all four losses, the
DeepSpeed optimizer step and the teacher update) for each requested ZeRO stage.

    python -m benchmarks.train_throughput                      # GPU: rsfm_base, bf16, ZeRO 0 and 2
    python -m benchmarks.train_throughput --quick              # CPU: rsfm_tiny, fp32, tiny views
    python -m benchmarks.train_throughput --model rsfm_small --stages 0,1,2,3 --json out.json

Batches are cut once by the real data pipeline (``rsfm_train.data.make_loader``,
synthetic scenes, modality dropout off so every step has the same shapes) and replayed,
so the numbers measure the engine, not scene generation. Steps after ``--warmup`` are
timed one by one (CUDA synchronised) and the median is reported. MFU uses the model
FLOPs of ``rsfm_core.model.model_stats`` (3x student forward + 1x teacher forward per
sample) over the dense bf16 (or TF32) peak of the device from
``rsfm_train.metrics.PEAK_FLOPS``; on a CPU it is omitted. Tokens are view-1 patch tokens.

``--against REF`` (e.g. ``--against b0f73cf``) times the same configuration with the
engine of git revision ``REF`` (its ``train/`` package, extracted with ``git archive``
into a temporary folder and put first on ``PYTHONPATH``; the library ``rsfm_core`` is
this checkout's) and with this checkout, alternating ``--rounds`` times in separate
processes, and prints both medians and their ratio: before/after numbers of one run.

On a CPU DeepSpeed runs with its CPU accelerator and gloo; ZeRO buckets are capped at
1e6 elements there (DeepSpeed's 5e8 defaults are allocated and zero-filled every step) and
``overlap_comm`` is off (on a CPU it slows every op of the step several-fold).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from typing import Any

import torch

from . import _common as C

CPU_BUCKETS = (
    "{zero_optimization: {reduce_bucket_size: 1000000, allgather_bucket_size: 1000000,"
    " stage3_prefetch_bucket_size: 1000000, overlap_comm: false}}"
)


def _config(args: Any, stage: int, out_dir: str, cpu: bool):
    from rsfm_train.config import load_config

    over = [
        f"model.name={args.model}",
        f"data.crop_size={args.crop}",
        f"data.dates_per_view={args.dates}",
        "data.modality_dropout=0.0",
        "data.workers=0",
        "data.synthetic_samples=8",
        f"deepspeed.micro_batch={args.micro_batch}",
        f"deepspeed.zero_stage={stage}",
        f"deepspeed.bf16={str(args.bf16).lower()}",
        f"deepspeed.extra={CPU_BUCKETS if cpu and stage > 0 else '{}'}",
        "optim.total_steps=1000",
        "optim.warmup_steps=10",
        f"run.out_dir={out_dir}",
        "run.ckpt_every=0",
    ]
    return load_config("small_gpu" if not cpu else "tiny_cpu", over)


def bench_stage(args: Any, stage: int, cpu: bool) -> dict[str, Any]:
    """Median step time and throughput of ``args.steps`` timed steps at ZeRO ``stage``."""
    from rsfm_train.data import make_loader
    from rsfm_train.engine import Trainer
    from rsfm_train.metrics import peak_flops

    with tempfile.TemporaryDirectory(prefix="rsfm_bench_") as tmp:
        cfg = _config(args, stage, tmp, cpu)
        tr = Trainer(cfg, progress=False)
        try:
            it = iter(make_loader(cfg, tr.rank, tr.world))
            pairs = [next(it).to(tr.device) for _ in range(4)]
            times, rec = [], {}
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                rec = tr.train_step([pairs[i % len(pairs)]])
                if tr.device.type == "cuda":
                    torch.cuda.synchronize(tr.device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
            dt = statistics.median(times)
            peak = peak_flops(tr.device, cfg.deepspeed.bf16)
            mem = (
                torch.cuda.max_memory_allocated(tr.device) / 2**30
                if tr.device.type == "cuda"
                else None
            )
        finally:
            tr.close()
    flops = rec["model_flops"] / dt
    return {
        "model": args.model, "zero": stage, "precision": "bf16" if args.bf16 else "fp32",
        "micro_batch": args.micro_batch, "crop_px": args.crop, "dates": args.dates,
        "step_ms": dt * 1e3, "samples_per_s": rec["samples"] / dt, "tokens_per_s": rec["tokens"] / dt,
        "model_tflops": flops / 1e12, "mfu": flops / peak if peak else None, "max_mem_gib": mem,
    }  # fmt: skip


def _against(args: Any, argv: list[str]) -> int:
    """Alternate this checkout's engine and revision ``args.against``'s, one process each."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    rest, skip = [], False
    for a in argv:  # the same arguments without --against/--rounds/--json
        if skip:
            skip = False
            continue
        if a in ("--against", "--rounds", "--json"):
            skip = True
            continue
        if not a.startswith(("--against=", "--rounds=", "--json=")):
            rest.append(a)
    times: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="rsfm_ref_") as tmp:
        tar = subprocess.run(["git", "archive", args.against, "train"], cwd=repo,
                             check=True, capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", tmp], input=tar, check=True)
        (Path(tmp) / "rsfm_train").symlink_to(Path(tmp) / "train")
        for _ in range(args.rounds):
            for name in ("before", "after"):
                env = dict(os.environ)
                if name == "before":
                    env["PYTHONPATH"] = tmp + os.pathsep + env.get("PYTHONPATH", "")
                out = Path(tmp) / f"{name}.json"
                cmd = [
                    sys.executable,
                    "-m",
                    "benchmarks.train_throughput",
                    *rest,
                    "--json",
                    str(out),
                ]
                subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
                rows = json.loads(out.read_text())["rows"]
                times[name] += [r["step_ms"] for r in rows]
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"engine of {args.against} (before): median step {before:.1f} ms over {times['before']}")
    print(f"this checkout (after):            median step {after:.1f} ms over {times['after']}")
    print(f"after / before = {after / before:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=None, help="registry name (default: rsfm_base on GPU, rsfm_tiny on CPU)"
    )
    p.add_argument("--stages", default="0,2", help="comma-separated ZeRO stages (default 0,2)")
    p.add_argument("--micro-batch", type=int, default=None, help="samples per step (GPU 32, CPU 2)")
    p.add_argument("--crop", type=int, default=None, help="view side in pixels (GPU 96, CPU 32)")
    p.add_argument("--dates", type=int, default=None, help="dates per view (GPU 4, CPU 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (GPU 20, CPU 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (GPU 5, CPU 2)")
    p.add_argument(
        "--fp32", action="store_true", help="float32 on GPU (default bf16; CPU is always fp32)"
    )
    p.add_argument("--against", default=None, help="git revision: time its engine vs this one")
    p.add_argument("--rounds", type=int, default=2, help="--against: alternations (default 2)")
    args = p.parse_args(argv)
    if args.against:
        import sys

        return _against(args, list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING)
    device = C.default_device()
    cpu = device.type == "cpu" or args.quick
    if device.type == "cpu" and not args.quick:
        print("no GPU: running the --quick CPU configuration (rsfm_tiny, fp32)")
    gpu_defaults = {
        "model": "rsfm_base",
        "micro_batch": 32,
        "crop": 96,
        "dates": 4,
        "steps": 20,
        "warmup": 5,
    }
    cpu_defaults = {
        "model": "rsfm_tiny",
        "micro_batch": 2,
        "crop": 32,
        "dates": 2,
        "steps": 5,
        "warmup": 2,
    }
    for k, v in (cpu_defaults if cpu else gpu_defaults).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.bf16 = device.type == "cuda" and not args.fp32
    rows = [bench_stage(args, int(s), device.type == "cpu") for s in args.stages.split(",")]
    cols = ["model", "zero", "precision", "micro_batch", "step_ms", "samples_per_s", "tokens_per_s",
            "model_tflops", "mfu", "max_mem_gib"]  # fmt: skip
    C.print_table(rows, cols, title=f"pretraining step throughput on {C.device_name(device)}")
    if args.json:
        print(
            f"wrote {C.write_json(args.json, {'benchmark': 'train_throughput', 'rows': rows}, device)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
