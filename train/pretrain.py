"""``rsfm pretrain``: load the config, set up the process group, train, checkpoint.

One process::

    rsfm pretrain --config tiny_cpu run.out_dir=runs/demo optim.total_steps=50

Many processes: the same command under ``torchrun`` or the ``deepspeed`` launcher (see
docs/training.md); every rank runs this code, rank 0 writes the run folder's metadata,
metrics and the shared checkpoint files. ``python -m rsfm_train.pretrain`` is the same
command without the ``rsfm`` entry point.

Resume: ``--resume`` (= ``run.resume=auto``) continues from the newest checkpoint of
``run.out_dir`` whose files all verify; ``--resume-from PATH`` (= ``run.resume=PATH``)
from that folder. Without it, a run folder that already holds checkpoints is refused
rather than mixed with a new run's.

Order of a start, so that a refusal changes nothing: the config is checked against the
model registry (``load_config``), the checkpoint to resume is chosen and checked against
the config (tensor shapes, rank count) -- all before the process group, DeepSpeed or any
file of the run folder is touched; then the run folder's lock is taken (a second run on
the same folder is refused), the engine built, the checkpoint loaded, and only then is
the run metadata written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("rsfm_train")


def resolve_resume(resume: str, ckpt_dir: Path) -> Path | None:
    """The checkpoint folder to resume from for ``run.resume`` (``no``/``auto``/a path).

    ``auto`` with no checkpoint yet starts fresh; ``no`` with checkpoints present raises.
    """
    from .checkpoint import CheckpointError, find_latest, verify

    latest = find_latest(ckpt_dir)
    if resume == "no":
        if latest is not None:
            raise CheckpointError(
                f"{ckpt_dir} already holds checkpoints (newest: {latest.name}). Pass --resume "
                "(run.resume=auto) to continue that run, or choose another run.out_dir"
            )
        return None
    if resume == "auto":
        if latest is None:
            log.info("run.resume=auto: no complete checkpoint in %s, starting fresh", ckpt_dir)
        return latest
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"run.resume={resume!r}: no such checkpoint folder")
    problem = verify(path)
    if problem is not None:
        raise CheckpointError(f"run.resume={resume!r} cannot be resumed from: {problem}")
    return path


def run_pretrain(
    cfg: Any, max_steps: int | None = None, progress: bool = True, loader_factory: Any = None
) -> Any:
    """Train ``cfg`` (a ``PretrainConfig``) to ``optim.total_steps`` (or ``max_steps``);
    returns the final ``TrainState``. ``loader_factory``: ``make_loader``'s signature
    (default: :func:`rsfm_train.data.make_loader`)."""
    from .config import validate_model
    from .engine import Trainer, check_resume

    validate_model(cfg)  # load_config did; a config built in Python may not have been
    ckpt = resolve_resume(cfg.run.resume, Path(cfg.run.out_dir) / "checkpoints")
    if ckpt is not None:
        check_resume(ckpt, cfg)
    trainer = Trainer(cfg, progress=progress)
    try:
        position = trainer.load(ckpt) if ckpt is not None else None
        if loader_factory is None:
            from .data.loader import make_loader as loader_factory
        # pinned host batches on CUDA: the engine copies them with non_blocking=True
        pin = trainer.device.type == "cuda"
        loader = loader_factory(
            cfg, trainer.rank, trainer.world, cfg.run.seed, start=position, pin_memory=pin
        )
        return trainer.fit(loader, max_steps=max_steps)
    finally:
        trainer.close()


# ------------------------------------------------------------------------------ CLI

_EXAMPLE = """examples:
  rsfm pretrain --config tiny_cpu                       # packaged config, one CPU process
  rsfm pretrain --config train/configs/small_gpu.yaml optim.lr=3e-4 run.out_dir=runs/s1
  rsfm pretrain --config tiny_cpu --resume              # continue from the newest checkpoint
  torchrun --nproc_per_node 8 -m rsfm_train.pretrain --config small_gpu deepspeed.zero_stage=2
  deepspeed --no_local_rank --hostfile hosts --module rsfm_core.cli pretrain --config base_multinode
Overrides are dotted section.key=value pairs (values parsed as YAML); see docs/training.md."""


def add_pretrain_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``rsfm pretrain`` on the ``rsfm`` command's subparsers."""
    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining on DeepSpeed (CPU, one GPU, many nodes)",
        description="Multi-granularity contrastive pretraining (student/EMA teacher) on "
        "DeepSpeed. Writes config.yaml, ds_config.json, git.json, metrics.jsonl and "
        "checkpoints/ into run.out_dir.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", required=True, help="YAML file or packaged name (tiny_cpu, small_gpu, ...)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint of run.out_dir (run.resume=auto)",
    )
    p.add_argument("--resume-from", default=None, metavar="CKPT",
                   help="continue from this checkpoint folder (run.resume=CKPT)")  # fmt: skip
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many optimizer steps (default: optim.total_steps)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-4"
    )
    p.set_defaults(func=_run)
    return p


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_logs() -> None:
    """What a pretraining run need not print: one INFO line per synthetic scene (the
    data source renders them by the hundred; DEBUG keeps them) and DeepSpeed's warning
    that the LR scheduler was read before its first step (its engine reads it once at
    start-up: every run printed it, harmlessly)."""
    logging.getLogger("rsfm_core.synthetic").setLevel(logging.WARNING)
    logging.getLogger("DeepSpeed").addFilter(
        _DropMessage("learning rate from scheduler before it has started")
    )


def _cpu_accelerator_without_gpu() -> None:
    """No CUDA device: name DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``, unless
    set) rather than let it warn on every run that it fell back to the CPU."""
    import os

    import torch

    if "DS_ACCELERATOR" not in os.environ and torch.cuda.device_count() == 0:
        os.environ["DS_ACCELERATOR"] = "cpu"


def skip_shm_op_when_alone() -> bool:
    """One process (no ``WORLD_SIZE`` > 1): tell DeepSpeed its shared-memory collective
    op is unavailable, so that it neither JIT-compiles it (g++ + ninja, 2-3 min on first
    use, silently) nor uses it; one rank has nothing to reduce across. Several processes
    keep it (README: what the build needs). Returns whether it was skipped."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return False
    try:
        import deepspeed.ops as ops

        compatible = ops.__compatible_ops__  # DeepSpeed keeps and reads this one dict
    except (ImportError, AttributeError):
        return False
    if not isinstance(compatible, dict):
        return False
    compatible["deepspeed_shm_comm"] = False
    return True


def _run(args: argparse.Namespace) -> int:
    from rsfm_core.cliutil import passive_openmp, setup_threads

    passive_openmp()  # before torch loads (python -m rsfm_train.pretrain comes here first)
    _cpu_accelerator_without_gpu()
    from rsfm_core.files import LockedError, NoSpaceError

    from .checkpoint import CheckpointError
    from .config import ConfigError, load_config

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_logs()
    overrides = list(args.overrides)
    if args.resume or args.resume_from:
        overrides.append(f"run.resume={args.resume_from or 'auto'}")
    try:
        cfg = load_config(args.config, overrides)
        setup_threads(cfg.data.workers)
        skip_shm_op_when_alone()
        state = run_pretrain(cfg, max_steps=args.max_steps, progress=not args.no_progress)
    except (ConfigError, CheckpointError, LockedError, NoSpaceError, FileNotFoundError) as e:
        print(f"rsfm pretrain: error: {e}", file=sys.stderr)  # what to do, no traceback
        return 2
    print(f"done: step {state.step}, {state.samples} samples, {state.nonfinite_total} skipped "
          f"step(s); run folder {cfg.run.out_dir}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsfm_train.pretrain")
    sub = parser.add_subparsers(dest="cmd")
    add_pretrain_parser(sub).prog = "python -m rsfm_train.pretrain"
    args = parser.parse_args(["pretrain", *(sys.argv[1:] if argv is None else argv)])
    from rsfm_core.cliutil import run_command

    return run_command("python -m rsfm_train.pretrain", args.func, args)  # one-line errors


if __name__ == "__main__":
    sys.exit(main())
