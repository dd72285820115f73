"""The training step on one process: metrics, run folder, EMA teacher, NaN/inf guard, CLI."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn as nn

from .engine_common import (  # noqa: F401 (restore_determinism: an autouse fixture)
    assert_states_equal,
    micro_config,
    micro_overrides,
    read_metrics,
    restore_determinism,
    state_copy,
)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A ZeRO-0 micro run that has taken 3 steps (shared by the tests of this module)."""
    from rsfm_train.data import make_loader
    from rsfm_train.engine import Trainer

    cfg = micro_config(
        tmp_path_factory.mktemp("engine_train") / "run", 0, run__max_nonfinite_skips=2
    )
    tr = Trainer(cfg, progress=False)
    tr.loader = make_loader(cfg, 0, 1)
    tr.fit(tr.loader, max_steps=3)
    yield tr
    tr.close()
    torch.use_deterministic_algorithms(False)


def _next_pairs(tr):
    return [next(iter(tr.loader)) for _ in range(tr.cfg.deepspeed.grad_accum)]


def test_engine_ema_teacher_update_is_the_momentum_average():
    from rsfm_train.teacher import EMATeacher

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    teacher = EMATeacher(student)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.module.training
    t0 = state_copy(teacher.module)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    teacher.update(student, 0.9)
    for (name, s), t in zip(student.state_dict().items(), teacher.module.state_dict().values()):
        torch.testing.assert_close(t, 0.9 * t0[name] + 0.1 * s, rtol=1e-6, atol=1e-7)
    teacher.update(student, 1.0)  # momentum 1 freezes the teacher
    torch.testing.assert_close(
        teacher.module[0].weight, 0.9 * t0["0.weight"] + 0.1 * student[0].weight
    )


def test_collapse_monitor_measures_and_warns(caplog):
    from rsfm_train.metrics import CollapseMonitor

    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 16, 4, 4, generator=g)  # 32 tokens spread over 16 dims
    low = torch.randn(2, 1, 4, 4, generator=g) * torch.randn(1, 16, 1, 1, generator=g)  # rank 1
    v = torch.ones(2, 4, 4, dtype=torch.bool)
    mon = CollapseMonitor(0.5, window=64, per_step=32, min_tokens=32)
    r = mon.record(1, full, full, full, v, v)
    assert r["erank_student"] > 8 and r["erank_teacher"] == r["erank_student"]
    assert "possible representation collapse" not in caplog.text
    with caplog.at_level("WARNING", logger="rsfm_train"):
        for step in (2, 3, 4):  # the reservoir fills with rank-1 tokens
            r = mon.record(step, low, full, low, v, v)
    assert r["erank_student"] < 1.5 and r["erank_teacher"] > 8
    assert "possible representation collapse at step" in caplog.text
    small = CollapseMonitor(0.5, min_tokens=64)  # too few tokens yet: unknown, no warning
    r = small.record(1, full, full, full, v, v)
    assert math.isnan(r["erank_student"])
    # a batch of few tokens does not look like a collapse once the reservoir is full
    mon = CollapseMonitor(0.5, window=64, per_step=32, min_tokens=32)
    mon.record(1, full, full, full, v, v)
    mon.record(2, full, full, full, v, v)
    one = torch.zeros(2, 4, 4, dtype=torch.bool)
    one[:, 0, 0] = True  # two tokens only
    r = mon.record(3, full, full, full, one, one)
    assert r["erank_student"] > 8


def test_engine_run_folder_and_metrics(trainer):
    from rsfm_train.config import deepspeed_config, load_config

    run = trainer.run_dir
    assert load_config(run / "config.yaml") == trainer.cfg
    assert json.loads((run / "ds_config.json").read_text()) == json.loads(
        json.dumps(deepspeed_config(trainer.cfg, 1, cpu=not torch.cuda.is_available()))
    )
    git = json.loads((run / "git.json").read_text())
    assert git["commit"] and "dirty" in git and git["deepspeed"]
    assert json.loads((run / "encoder_config.json").read_text())["config"]["dim"] == 32
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    keys = {"loss", "loss_pixel", "loss_object", "loss_image", "lr", "grad_norm", "samples_per_s",
            "tokens_per_s", "data_wait_s", "compute_s", "skipped"}  # fmt: skip
    assert keys <= set(recs[-1]), sorted(keys - set(recs[-1]))
    assert "mfu" not in recs[-1]  # unknown peak on a CPU: omitted, not guessed
    collapse = {"erank_student", "dimstd_student", "erank_teacher", "dimstd_teacher",
                "erank_student_proj"}  # fmt: skip
    assert collapse <= set(recs[0])  # the first step is always measured
    # the micro run's 2 x 4 x 4 tokens are below the reservoir's 256: not yet measured
    assert math.isnan(recs[0]["erank_student"])
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in recs)
    # B * T * h * w tokens per modality of view 1: 2 modalities, or 1 after modality dropout
    assert recs[-1]["samples"] == 2 and recs[-1]["tokens"] in (2 * 2 * 4 * 4, 2 * 2 * 2 * 4 * 4)
    lrs = [r["lr"] for r in recs]  # warmup from the first step on: no step at LR 0
    assert 0 < lrs[0] < trainer.cfg.optim.lr and all(0 < x <= trainer.cfg.optim.lr for x in lrs)


def test_engine_teacher_follows_student_after_a_step(trainer):
    t0 = state_copy(trainer.teacher.module)
    s0 = state_copy(trainer.student)
    rec = trainer.train_step(_next_pairs(trainer))
    assert rec["skipped"] == 0
    m = trainer.cfg.teacher.momentum_at(trainer.state.step - 1, trainer.cfg.optim.total_steps)
    s1, t1 = state_copy(trainer.student), state_copy(trainer.teacher.module)
    assert any(not torch.equal(s0[k], s1[k]) for k in s0)
    for k in t0:
        torch.testing.assert_close(t1[k], m * t0[k] + (1 - m) * s1[k], rtol=1e-5, atol=1e-6)
    assert all(not p.requires_grad for p in trainer.teacher.parameters())


def _optimizer_state(tr) -> dict[str, torch.Tensor]:
    st = tr.engine.optimizer.state_dict()["state"]
    return {
        f"{i}.{k}": v.clone() for i, s in st.items() for k, v in s.items() if torch.is_tensor(v)
    }


def _nan_features(step, inputs):
    inputs.student_dense = inputs.student_dense * float("nan")
    return inputs


def _nan_gradient(step, inputs):  # the loss stays finite; one gradient does not
    inputs.student_pooled.register_hook(lambda g: g * float("nan"))
    return inputs


@pytest.mark.parametrize("fault", [_nan_features, _nan_gradient])
def test_engine_nonfinite_step_is_skipped_and_counted(trainer, fault):
    before = (
        state_copy(trainer.student),
        state_copy(trainer.teacher.module),
        state_copy(trainer.loss_fn),
    )
    opt0, steps0, skips0 = (
        _optimizer_state(trainer),
        trainer.engine.global_steps,
        trainer.state.nonfinite_total,
    )
    lr0, ds_skips0 = trainer.engine.get_lr()[0], trainer.engine.skipped_steps
    trainer.fault_hook = fault
    try:
        rec = trainer.train_step(_next_pairs(trainer))
    finally:
        trainer.fault_hook = None
    assert rec["skipped"] == 1 and trainer.state.nonfinite_total == skips0 + 1
    assert (fault is _nan_gradient) == math.isfinite(rec["loss"])
    for a, b in zip(before, (trainer.student, trainer.teacher.module, trainer.loss_fn)):
        assert_states_equal(a, state_copy(b))  # parameters, teacher and prototypes untouched
    assert_states_equal(opt0, _optimizer_state(trainer))  # Adam moments and step count too
    assert trainer.engine.global_steps == steps0 + 1  # DeepSpeed's counters moved on as usual
    # DeepSpeed counts the skips of its optimizer wrappers (bf16, ZeRO 1-3); on fp32 ZeRO-0
    # the fused AdamW skips inside its kernel and the engine's state counts the skip
    assert trainer.engine.skipped_steps == ds_skips0 + int(trainer.skips_in_deepspeed)
    assert trainer.engine.get_lr()[0] == lr0  # a skipped step does not advance the schedule
    rec = trainer.train_step(_next_pairs(trainer))  # the next clean step trains again
    assert rec["skipped"] == 0 and trainer.state.nonfinite_consecutive == 0
    assert any(not torch.equal(before[0][k], v) for k, v in state_copy(trainer.student).items())


def test_engine_aborts_after_k_consecutive_nonfinite_steps(trainer):
    from rsfm_train.engine import NonFiniteError

    trainer.fault_hook = _nan_features
    try:
        assert trainer.train_step(_next_pairs(trainer))["skipped"] == 1  # 1 of 2 allowed
        with pytest.raises(NonFiniteError, match="2 optimizer steps in a row"):
            trainer.train_step(_next_pairs(trainer))
    finally:
        trainer.fault_hook = None
    trainer.state.nonfinite_consecutive = 0


def test_engine_cli_parsers_pretrain_and_export(tmp_path, capsys):
    from rsfm_train.export import add_export_parser
    from rsfm_train.pretrain import add_pretrain_parser

    from rsfm_core.model import load_pretrained

    parser = argparse.ArgumentParser(prog="rsfm")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_pretrain_parser(sub)
    add_export_parser(sub)
    for cmd in ("pretrain", "export"):
        help_text = sub.choices[cmd].format_help()
        assert "example" in help_text and f"rsfm {cmd}" in help_text
    run = tmp_path / "run"
    overrides = micro_overrides(
        run, 0, optim__total_steps=2, run__ckpt_every=1, run__deterministic=False
    )
    args = parser.parse_args(["pretrain", "--config", "tiny_cpu", "--no-progress", *overrides])
    assert args.func(args) == 0
    more = micro_overrides(
        run, 0, optim__total_steps=3, run__ckpt_every=1, run__deterministic=False
    )
    args = parser.parse_args(
        ["pretrain", "--config", "tiny_cpu", "--resume", "--no-progress", *more]
    )
    assert args.func(args) == 0
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    args = parser.parse_args(["export", str(run), str(tmp_path / "model")])
    assert args.func(args) == 0
    assert load_pretrained(tmp_path / "model").config.dim == 32
    assert "done: step 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "stage, bf16", [(0, True), (1, False), (2, True), pytest.param(3, True, marks=pytest.mark.slow)]
)
def test_engine_nonfinite_skip_through_deepspeed_wrappers(tmp_path, stage, bf16):
    """bf16 and ZeRO 1-3: the poisoned gradients make DeepSpeed's own optimizer wrapper
    skip the step (its overflow path): nothing moves, DeepSpeed counts the skip and the
    schedule holds; the next clean step trains."""
    from rsfm_train.data import make_loader
    from rsfm_train.engine import Trainer

    from .engine_common import full_state

    cfg = micro_config(tmp_path / "run", stage, deepspeed__bf16=bf16)
    tr = Trainer(cfg, progress=False)
    try:
        assert tr.skips_in_deepspeed
        tr.loader = make_loader(cfg, 0, 1)
        tr.train_step(_next_pairs(tr))
        before = (full_state(tr.student), full_state(tr.teacher.module), _basic_state(tr))
        lr0, skips0 = tr.engine.get_lr()[0], tr.engine.skipped_steps
        tr.fault_hook = _nan_features
        rec = tr.train_step(_next_pairs(tr))
        tr.fault_hook = None
        assert rec["skipped"] == 1 and tr.state.nonfinite_total == 1
        after = (full_state(tr.student), full_state(tr.teacher.module), _basic_state(tr))
        for a, b in zip(before, after):
            assert_states_equal(a, b)
        assert tr.engine.skipped_steps == skips0 + 1 and tr.engine.get_lr()[0] == lr0
        assert tr.train_step(_next_pairs(tr))["skipped"] == 0
        assert tr.engine.get_lr()[0] != lr0
        assert any(not torch.equal(before[0][k], v) for k, v in full_state(tr.student).items())
    finally:
        tr.close()


def _basic_state(tr) -> dict[str, torch.Tensor]:
    """The AdamW moments and step counts DeepSpeed's wrappers hold (their fp32 partition)."""
    st = tr.engine.basic_optimizer.state.values()
    return {
        f"{i}.{k}": v.clone() for i, s in enumerate(st) for k, v in s.items() if torch.is_tensor(v)
    }


def test_engine_uses_deepspeeds_adamw_with_per_group_weight_decay(trainer):
    opt = trainer.engine.basic_optimizer  # built by DeepSpeed from the JSON optimizer block
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"]  # fp32 ZeRO-0: fused
    assert [g["weight_decay"] for g in opt.param_groups] == [trainer.cfg.optim.weight_decay, 0.0]
    names = {id(p): n for n, p in trainer.student.named_parameters()}
    no_decay = [names[id(p)] for p in opt.param_groups[1]["params"]]
    assert any(n.endswith(".bias") for n in no_decay) and any("norm" in n for n in no_decay)
    assert all(p.ndim >= 2 for p in opt.param_groups[0]["params"])
    # no gradient hooks on the student's parameters (the non-finite check needs none)
    assert not any(p._backward_hooks for p in trainer.student.parameters())


def test_engine_fit_reads_metrics_once_per_logging_window(tmp_path):
    """fit leaves each step's metrics on the device and reads them at every log_every-th
    step and at the end (one read per window), still writing one record per step."""
    from rsfm_train.data import make_loader
    from rsfm_train.engine import Trainer

    cfg = micro_config(tmp_path / "run", 0, run__log_every=3)
    tr = Trainer(cfg, progress=False)
    reads = []
    inner = tr._records
    tr._records = lambda pending: reads.append(len(pending)) or inner(pending)
    try:
        tr.fit(make_loader(cfg, 0, 1), max_steps=4)
    finally:
        tr.close()
    assert reads == [3, 1]  # steps 1-3 at step 3, step 4 at the end
    recs = read_metrics(tmp_path / "run")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["samples"] == 2 for r in recs)
    assert recs[0]["step_time_s"] == recs[2]["step_time_s"]  # the window's mean
