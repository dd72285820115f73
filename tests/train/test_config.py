"""Pretraining config: every YAML loads, overrides, errors that name the key, DeepSpeed JSON."""

from __future__ import annotations

import math

import pytest
import torch
from rsfm_train.config import (
    CONFIG_DIR,
    ConfigError,
    PretrainConfig,
    config_to_dict,
    deepspeed_config,
    load_config,
    save_config,
)

YAMLS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_four_configs_exist():
    assert {p.stem for p in YAMLS} >= {"tiny_cpu", "small_gpu", "base_multinode", "large_zero3"}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_yaml_loads_and_derives_deepspeed(path):
    cfg = load_config(path)
    assert isinstance(cfg, PretrainConfig)
    ds = deepspeed_config(cfg, world_size=8)
    assert ds["train_batch_size"] == cfg.deepspeed.micro_batch * cfg.deepspeed.grad_accum * 8


def test_tiny_cpu_is_a_cpu_demo():
    cfg = load_config("tiny_cpu")  # packaged name works as well as a path
    assert cfg.model.name == "rsfm_tiny" and cfg.data.source == "synthetic"
    assert cfg.deepspeed.zero_stage == 0 and not cfg.deepspeed.bf16
    big = load_config("large_zero3")
    assert big.deepspeed.zero_stage == 3 and big.deepspeed.bf16
    assert load_config("base_multinode").deepspeed.zero_stage == 2


def test_overrides_parse_yaml_scalars():
    cfg = load_config(
        "tiny_cpu",
        [
            "optim.lr=3e-4",  # PyYAML reads this as a string: float fields accept it
            "loss.object=false",
            "deepspeed.grad_accum=4",
            "optim.betas=[0.9, 0.95]",
            "data.shards=null",
            "model.overrides.depth=3",
            "run.out_dir=/tmp/x",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.loss.object is False and cfg.deepspeed.grad_accum == 4
    assert cfg.optim.betas == (0.9, 0.95) and cfg.data.shards is None
    assert cfg.model.overrides == {"depth": 3} and cfg.run.out_dir == "/tmp/x"


def test_unknown_key_names_it_and_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config("tiny_cpu", ["optim.lrr=1.0"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "did you mean 'optim.lr'" in msg and "weight_decay" in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer:\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match=r"'optimizer'.*valid keys in the top level: model, data"):
        load_config(bad)


@pytest.mark.parametrize(
    "override,match",
    [
        ("optim.total_steps=ten", r"optim.total_steps: expected int; got 'ten'"),
        ("optim.total_steps=1.5", r"optim.total_steps: expected int"),
        ("loss.pixel=1", r"loss.pixel: expected bool"),
        ("optim.lr=fast", r"optim.lr: expected float"),
        ("optim.betas=[0.9]", r"optim.betas: expected 2 values"),
        ("data.source=s3", r"data.source: 's3' is not one of \['synthetic', 'shards', 'mixed'\]"),
        ("data.modalities=s2", r"data.modalities: expected a list"),
        ("optim=3", r"optim: expected a mapping"),
        ("optim.lr.x=3", r"'lr' is a value, not a section"),
        ("nokey", r"not of the form"),
    ],
)
def test_type_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_cpu", [override])


@pytest.mark.parametrize(
    "override,match",
    [
        ("deepspeed.zero_stage=4", "zero_stage"),
        ("optim.warmup_steps=5000", "warmup_steps"),
        ("data.source=shards", "data.shards must be set"),
        ("deepspeed.extra={train_batch_size: 3}", "derived"),
    ],
)
def test_range_and_cross_field_checks(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_cpu", [override])


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["data.modalities=[s2, landsat]"], r"\['landsat'\] are not modalities of model "
         r"'rsfm_tiny', which declares s2 \(sentinel2_l2a\), s1 \(sentinel1_grd\), hs \(enmap\)"),
        (["model.name=rsfm_huge"], r"model.name: 'rsfm_huge' is not a registered model"),
        (["model.overrides={widht: 3}"], r"model.overrides: unknown config keys \['widht'\]"),
        (["data.crop_size=30"], r"crop_size=30 is not a multiple of the token size \(4 px"),
        (["data.modalities=[s2, rgb]", "data.crop_size=80"], "different patches"),
    ],
)  # fmt: skip
def test_config_is_checked_against_the_model_registry(overrides, match):
    """Before any process group or DeepSpeed engine exists (load_config runs first)."""
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_cpu", overrides)


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """24 one-sample shards: 12 groups of data.shuffle_shards=2, one per loader worker
    of the shipped multi-node configs (10-12 workers; every stream needs a group)."""
    from rsfm_train.data.prepare import PrepareOptions, prepare_synthetic

    out = tmp_path_factory.mktemp("shards")
    opts = PrepareOptions(out, chip=16, samples_per_shard=1, buffer_mb=0.2, min_valid=0.0, seed=1)
    prepare_synthetic(6, opts, size=32, num_dates=2)
    return out


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_shipped_yaml_builds_its_model_and_loader(path, many_shards):
    """The student (encoder + heads) on the meta device, the DeepSpeed JSON and the data
    loader of every shipped config; one batch where the data is synthetic."""
    import torch
    from rsfm_train.data import make_loader
    from rsfm_train.engine import student_shapes

    from rsfm_core.model import build_model

    cfg = load_config(path)
    if cfg.data.source == "shards":
        cfg = load_config(path, [f"data.shards={many_shards}"])
    with torch.device("meta"):
        encoder = build_model(cfg.model.name, **cfg.model.overrides)
    assert set(cfg.data.modalities) <= set(encoder.config.modalities)
    assert any(n.startswith("heads.") for n in student_shapes(cfg))
    assert (
        deepspeed_config(cfg, world_size=8)["zero_optimization"]["stage"]
        == cfg.deepspeed.zero_stage
    )
    loader = make_loader(cfg, rank=0, world_size=1)
    if cfg.data.source == "synthetic":
        small = load_config(path, ["deepspeed.micro_batch=1", "data.workers=0"])
        pair = next(iter(make_loader(small, 0, 1)))
        assert set(pair.view1) <= set(cfg.data.modalities) and set(pair.view2) <= set(
            cfg.data.modalities
        )
        d = next(iter(pair.view1.values()))
        assert (
            d.pixels.shape[-1] == cfg.data.crop_size
            and d.pixels.shape[1] == cfg.data.dates_per_view
        )
    assert loader.state().workers == max(1, cfg.data.workers)


def test_tiny_cpu_trains_two_steps(tmp_path, monkeypatch):
    """The CPU demo config as shipped (only the run folder and step count changed)."""
    from rsfm_train.pretrain import run_pretrain

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)  # what init_distributed sets goes afterwards

    import torch

    cfg = load_config("tiny_cpu", [f"run.out_dir={tmp_path}", "run.ckpt_every=0"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small model on a shared 2-core machine: see test_engine_learning
    try:
        state = run_pretrain(cfg, max_steps=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert state.step == 2 and (tmp_path / "checkpoints" / "step_00000002").is_dir()


def test_missing_file_lists_packaged_configs():
    with pytest.raises(FileNotFoundError, match="tiny_cpu"):
        load_config("no_such_config")


def test_deepspeed_config_derived_values():
    cfg = load_config(
        "large_zero3", ["deepspeed.micro_batch=4", "deepspeed.grad_accum=3", "optim.grad_clip=0.5"]
    )
    ds = deepspeed_config(cfg, world_size=16)
    assert ds["train_batch_size"] == 4 * 3 * 16
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    o = cfg.optim  # DeepSpeed's own AdamW; the per-group weight decay comes with the groups
    assert ds["optimizer"]["type"] == "AdamW"
    assert ds["optimizer"]["params"] == {"lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                                         "weight_decay": o.weight_decay, "torch_adam": False}  # fmt: skip
    assert "scheduler" not in ds  # the engine's WarmupCosine
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}  # bf16 + ZeRO: fp32 accumulation
    assert ds["steps_per_print"] >= 10**6 and ds["wall_clock_breakdown"] is False
    tiny = deepspeed_config(load_config("tiny_cpu"), 1, cpu=True)
    assert tiny["zero_optimization"] == {"stage": 0} and tiny["bf16"]["enabled"] is False
    assert "data_types" not in tiny  # fp32: nothing to choose
    # fp32 ZeRO-0: torch's fused AdamW (the engine's non-finite skip goes through it)
    assert tiny["optimizer"]["params"]["torch_adam"] is True
    assert tiny["optimizer"]["params"]["fused"] is True


def test_warmup_cosine_schedule():
    from rsfm_train.config import WarmupCosine

    optim = load_config(
        "tiny_cpu", ["optim.warmup_steps=4", "optim.total_steps=10", "optim.min_lr_ratio=0.1"]
    ).optim
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = WarmupCosine(opt, optim)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[:3] == [0.5, 1.0, 1.5]  # step k of the warmup at k / 4: never at LR 0
    assert lrs[3] == pytest.approx(2.0 * (0.1 + 0.9 * (1 + math.cos(math.pi / 6)) / 2))
    assert lrs[9:] == [pytest.approx(0.2)] * 3  # the floor from total_steps on
    steps = sched.state_dict()
    sched.step(hold=True)  # a skipped step holds the schedule
    assert opt.param_groups[0]["lr"] == lrs[-1] + 0 and sched.state_dict() == steps
    again = WarmupCosine(opt, optim)
    again.load_state_dict(steps)
    assert again.get_lr() == sched.get_lr()
    # a checkpoint of DeepSpeed's WarmupCosineLR (the engine before): iteration k + 1 after
    # k optimizer steps (it was stepped to 1 at the start)
    fresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    old = WarmupCosine(fresh, optim)
    old.load_state_dict({"last_batch_iteration": 3})
    assert old.state_dict()["steps"] == 2 and fresh.param_groups[0]["lr"] == lrs[2]


def test_deepspeed_extra_is_merged():
    cfg = load_config(
        "base_multinode", ["deepspeed.extra={zero_optimization: {reduce_bucket_size: 1000}}"]
    )
    zero = deepspeed_config(cfg, 2)["zero_optimization"]
    assert zero["stage"] == 2 and zero["reduce_bucket_size"] == 1000
    cpu = deepspeed_config(cfg, 2, cpu=True)["zero_optimization"]  # CPU defaults, extra wins
    assert cpu["overlap_comm"] is False and cpu["allgather_bucket_size"] == 10**6
    assert cpu["reduce_bucket_size"] == 1000
    tiny = deepspeed_config(load_config("tiny_cpu"), 1, cpu=True)["zero_optimization"]
    assert tiny == {"stage": 0}  # ZeRO-0 has no buckets


def test_deepspeed_accepts_the_generated_json():
    """DeepSpeed's own parser (no process group: world size 1) accepts every config."""
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    for path in YAMLS:
        parsed = ds_config.DeepSpeedConfig(deepspeed_config(load_config(path), world_size=1))
        cfg = load_config(path)
        assert parsed.train_batch_size == cfg.deepspeed.micro_batch * cfg.deepspeed.grad_accum
        assert parsed.zero_optimization_stage == cfg.deepspeed.zero_stage
        assert parsed.bfloat16_config.enabled == cfg.deepspeed.bf16
        assert parsed.gradient_clipping == cfg.optim.grad_clip
        assert parsed.optimizer_name == "adamw" and parsed.scheduler_name is None


def test_round_trip(tmp_path):
    cfg = load_config("base_multinode", ["optim.betas=[0.8, 0.9]", "model.overrides.depth=2"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert config_to_dict(again)["optim"]["betas"] == [0.8, 0.9]
    assert load_config(None) == PretrainConfig()  # no file: the schema defaults


def test_teacher_momentum_schedule():
    t = load_config("tiny_cpu").teacher
    assert t.momentum_at(0, 100) == pytest.approx(t.momentum_start)
    assert t.momentum_at(100, 100) == pytest.approx(t.momentum_end)
    assert t.momentum_start < t.momentum_at(50, 100) < t.momentum_end
