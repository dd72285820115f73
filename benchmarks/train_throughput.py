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
    args = p.parse_args(argv)
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
