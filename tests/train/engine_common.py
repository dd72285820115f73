"""Shared helpers of the engine tests: a micro configuration that keeps DeepSpeed runs
to a fraction of a second per step on a 2-core CPU, and readers for run folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

MICRO_MODEL = "{dim: 32, depth: 2, heads: 2, fusion_depth: 2, hyper_dim: 16}"
# On a CPU, DeepSpeed's default 5e8-element ZeRO buckets are allocated and zero-filled
# every step, and overlap_comm (which the generated JSON turns on) slows every op down:
# seconds per step for a 0.1M-parameter model. Small buckets, no overlap keep ZeRO fast.
SMALL_BUCKETS = (
    "{zero_optimization: {reduce_bucket_size: 1000000, allgather_bucket_size: 1000000,"
    " stage3_prefetch_bucket_size: 100000, stage3_param_persistence_threshold: 64,"
    " overlap_comm: false}}"
)


def micro_overrides(out_dir: Path | str, stage: int = 0, **extra: object) -> list[str]:
    """Overrides of ``tiny_cpu`` for a micro run: 32-dim model, 16 px views, 2 samples."""
    base = {
        "model.overrides": MICRO_MODEL,
        "data.crop_size": 16,
        "data.dates_per_view": 2,
        "data.synthetic_samples": 4,
        "deepspeed.micro_batch": 2,
        "deepspeed.zero_stage": stage,
        "deepspeed.extra": SMALL_BUCKETS if stage > 0 else "{}",
        "loss.head_hidden_dim": 32,
        "loss.head_dim": 16,
        "optim.total_steps": 20,
        "optim.warmup_steps": 1,
        "run.out_dir": str(out_dir),
        "run.log_every": 1,
        "run.ckpt_every": 0,
        "run.deterministic": True,
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def micro_config(out_dir: Path | str, stage: int = 0, **extra: object):
    from rsfm_train.config import load_config

    return load_config("tiny_cpu", micro_overrides(out_dir, stage, **extra))


def read_metrics(run_dir: Path | str) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers; under ZeRO-3 the partitioned parameters are gathered first
    (their ``state_dict`` entries are empty placeholders)."""
    params = list(module.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        return state_copy(module)
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        out = {n: p.detach().clone() for n, p in module.named_parameters()}
    out.update({n: b.detach().clone() for n, b in module.named_buffers()})
    return out


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"tensors differ: {bad[:5]}"


@pytest.fixture(autouse=True)
def restore_determinism():
    """Autouse in every module that imports it: the engine may turn on deterministic
    algorithms process-wide; put the flag back after each test."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)
