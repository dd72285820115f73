"""``rsfm export RUN_DIR OUT_DIR``: a training run -> ``config.json`` + ``model.safetensors``.

Reads the newest complete checkpoint of the run (or ``--tag``) and writes the student's
**encoder** (projection heads dropped) with ``RSFMEncoder.save_pretrained``, the format
``rsfm_core.load_pretrained`` and the inference module read. ``--weights teacher`` writes
the EMA teacher's encoder instead (DINO-style evaluations often prefer it).

Where the weights come from:
- ZeRO 0: the module state in DeepSpeed's ``mp_rank_00_model_states.pt``, loaded with
  ``torch.load(weights_only=True)``. DeepSpeed is not imported.
- ZeRO 1-3: the float32 master weights consolidated from the per-rank optimizer shards
  with ``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``
  (imported lazily; those files are pickles, so the checkpoint must be trusted).
- bf16 with ZeRO 0: DeepSpeed's BF16 optimizer keeps its float32 masters in a layout
  ``zero_to_fp32`` does not read, so the module's bf16 weights are exported (upcast to
  float32) with a warning; use ZeRO >= 1 or ``--weights teacher`` (float32) for full
  precision.
- teacher: ``rsfm_teacher.safetensors`` (ours; float32, never pickled).

The encoder's architecture comes from ``encoder_config.json`` in the run folder (written
at the start of training), so export needs no registry lookup and no training config.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: `rsfm export --help` (this module) stays fast.
log = logging.getLogger("rsfm_train")

ENCODER_PREFIX = "encoder."


def _checkpoint(run_dir: Path, tag: str | None) -> Path:
    from .checkpoint import COMPLETE, find_latest

    root = run_dir / "checkpoints"
    ckpt = root / tag if tag else find_latest(root)
    if ckpt is None:
        raise FileNotFoundError(
            f"{root} holds no complete checkpoint; is {run_dir} a run folder of `rsfm pretrain`?"
        )
    if not (ckpt / COMPLETE).is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no {COMPLETE} marker)")
    return ckpt


def _student_state(ckpt: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    import torch

    if zero_stage == 0:
        f = ckpt / "mp_rank_00_model_states.pt"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: not a ZeRO-0 DeepSpeed checkpoint")
        state = torch.load(f, map_location="cpu", weights_only=True)["module"]
        if any(v.dtype == torch.bfloat16 for v in state.values()):
            log.warning(
                "%s holds bf16 module weights (bf16 + ZeRO 0): exporting them upcast to "
                "float32; use --weights teacher or ZeRO >= 1 for float32 masters",
                f,
            )
        return state
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    tag: str | None = None,
    weights: str = "student",
    dtype: str = "float32",
) -> Path:
    """Write the encoder of ``run_dir``'s newest complete checkpoint (or ``tag``) to
    ``out_dir`` as ``config.json`` + ``model.safetensors`` (floating tensors stored as
    ``dtype``: float32, float16 or bfloat16); returns ``out_dir``."""
    import torch
    from safetensors.torch import load_file

    from rsfm_core.model import ModelConfig, RSFMEncoder

    from .checkpoint import STATE_FILE, TEACHER_FILE

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if weights not in ("student", "teacher"):
        raise ValueError(f"weights must be 'student' or 'teacher', got {weights!r}")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    cfg_file = run_dir / "encoder_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"{cfg_file} not found: is {run_dir} a run folder of `rsfm pretrain`?"
        )
    ckpt = _checkpoint(run_dir, tag)
    info = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    if weights == "teacher":
        state = load_file(str(ckpt / TEACHER_FILE))
    else:
        state = _student_state(ckpt, int(info["zero_stage"]))
    enc = {
        k[len(ENCODER_PREFIX) :]: v.float()
        for k, v in state.items()
        if k.startswith(ENCODER_PREFIX)
    }
    if not enc:
        raise ValueError(f"{ckpt}: no '{ENCODER_PREFIX}*' weights in the {weights} state")
    config = ModelConfig.from_dict(json.loads(cfg_file.read_text(encoding="utf-8"))["config"])
    model = RSFMEncoder(config)
    model.load_state_dict(enc, strict=True)
    model.save_pretrained(out_dir, getattr(torch, dtype))
    log.info("exported the %s encoder of %s (step %d) to %s", weights, ckpt, info["step"], out_dir)
    return out_dir


# ------------------------------------------------------------------------------ CLI

_EXAMPLE = """example:
  rsfm export runs/tiny_cpu exported/tiny
  python -c "import rsfm_core as rs; m = rs.load_pretrained('exported/tiny')"
The run's newest complete checkpoint is used unless --tag names one (e.g. step_00000050)."""


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``rsfm export`` on the ``rsfm`` command's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="training run -> config.json + model.safetensors (the encoder)",
        description="Export the encoder of a pretraining run's newest complete checkpoint "
        "as config.json + model.safetensors (no pickle), readable by rsfm_core.load_pretrained "
        "and `rsfm embed`.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="run folder of `rsfm pretrain` (run.out_dir)")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--tag", default=None, help="checkpoint to export (default: newest complete)")
    p.add_argument(
        "--weights", choices=("student", "teacher"), default="student",
        help="the trained student (default) or its EMA teacher",
    )  # fmt: skip
    p.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
        help="storage type of the weights (float16 halves the file; default float32)",
    )  # fmt: skip
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = export(args.run_dir, args.out_dir, tag=args.tag, weights=args.weights, dtype=args.dtype)
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")
    return 0
