"""Pretraining configuration: dataclasses are the schema, YAML holds values, CLI overrides.

``load_config(path, ["optim.lr=3e-4", "loss.object=false"])`` reads a YAML file (or a
packaged config by name: ``tiny_cpu``), applies dotted ``key=value`` overrides (values
parsed as YAML scalars) and checks every key and type: an unknown key raises naming it
and the valid keys of its section; a value of the wrong type raises naming the key.
``deepspeed_config(cfg, world_size)`` derives the DeepSpeed JSON; it is generated, never
hand-edited, and written next to the resolved config into every run folder.

Decisions:
- The batch arithmetic lives in one place, the ``deepspeed`` section: ``micro_batch`` is
  what one rank's data loader yields per micro-step; the optimizer-step batch is
  ``micro_batch * grad_accum * world_size`` (DeepSpeed's ``train_batch_size``).
- The optimizer is DeepSpeed's own AdamW from the generated JSON ``optimizer`` block
  (fused where DeepSpeed has a fused Adam for the accelerator; ``torch.optim.AdamW`` on
  the CPU accelerator, where DeepSpeed's FusedAdam would be a JIT-built C++ op). The
  per-group weight decay (none for norms, biases and embeddings) comes from the
  parameter groups the engine passes as ``deepspeed.initialize(model_parameters=...)``:
  a group's ``weight_decay`` wins over the block's default.
- The learning-rate schedule (:class:`WarmupCosine`) is handed to ``deepspeed.initialize``
  as a callable: linear warmup over ``optim.warmup_steps``, cosine to
  ``optim.min_lr_ratio * lr`` at ``optim.total_steps``; optimizer step ``k`` (1-based)
  runs at ``k / warmup_steps`` of the peak during warmup, so no step runs at LR 0
  (DeepSpeed's ``WarmupCosineLR`` starts at ratio 0 for two iterations). DeepSpeed steps
  it once per applied optimizer step (not on its overflow skips) and saves it in its
  checkpoints.
- bf16 with ZeRO 1-3: ``data_types.grad_accum_dtype`` is float32, deliberately: gradients
  of the micro-steps of one optimizer step are summed in float32 (a bf16 sum loses the
  low bits of every addend after a few micro-steps: 8 mantissa bits). ZeRO-0 with bf16
  accumulates in bf16: DeepSpeed 0.19 supports no other mix without ZeRO.
- PyYAML reads ``3e-4`` (no dot) as a string: float fields accept such strings when
  ``float()`` parses them. Nothing else is coerced (``1`` is not a bool, ``1.0`` not an int).
- The schema is pydantic models in strict mode with unknown keys forbidden (pydantic comes
  with DeepSpeed, which validates its own JSON the same way); :func:`_config_error` turns
  pydantic's first error into one line that names the dotted key, says what was expected
  and, for an unknown key, suggests the closest valid one and lists the section's keys.
"""

from __future__ import annotations

import difflib
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class _Section(BaseModel):
    """Strict: no unknown keys, no coercion beyond the two YAML conveniences below."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_conveniences(cls, value: Any, info) -> Any:
        """``3e-4`` arrives from YAML as a string; tuples arrive as lists."""
        tp = cls.model_fields[info.field_name].annotation
        if isinstance(value, str) and float in _members(tp):
            try:
                return float(value)
            except ValueError:
                return value
        if isinstance(value, list) and typing.get_origin(tp) is tuple:
            return tuple(value)
        if value is None and isinstance(tp, type) and issubclass(tp, _Section):
            return {}  # an empty YAML section ("loss:") means its defaults
        return value


def _members(tp: Any) -> tuple:
    """The alternatives of a union annotation (``float | None`` -> (float, NoneType))."""
    return (
        typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, type(int | None)) else (tp,)
    )


class ModelSection(_Section):
    name: str = "rsfm_tiny"  # a key of rsfm_core's model registry
    overrides: dict[str, Any] = Field(default_factory=dict)  # kwargs for build_model


class MixEntry(_Section):
    """One source of ``data.source: mixed``: a micro-batch comes from one source, chosen
    with probability proportional to ``weight``; ``crop_size``/``dates_per_view`` override
    the data section's for this source (e.g. 4 px single-token views of point series)."""

    source: Literal["synthetic", "shards"] = "shards"
    shards: str | None = None  # shard folder/URL/glob of this source
    weight: float = 1.0
    crop_size: int | None = None
    dates_per_view: int | None = None


class DataSection(_Section):
    source: Literal["synthetic", "shards", "mixed"] = "synthetic"
    shards: str | None = None  # shard URL/glob/folder when source == "shards"
    mix: list[MixEntry] = Field(default_factory=list)  # the sources when source == "mixed"
    modalities: list[str] = Field(default_factory=lambda: ["s2", "s1"])
    crop_size: int = 64  # pixels per side of each view (at the finest modality's GSD)
    dates_per_view: int = 4
    modality_dropout: float = 0.3  # probability that a view loses one of its modalities
    workers: int = 2
    synthetic_samples: int = 256  # scenes per epoch of the synthetic source
    min_overlap: float = 0.25  # least fraction of a view's tokens that both views cover
    rotate_flip: bool = True  # random flips and 90-degree rotations, per view
    band_keep: float = 1.0  # < 1: each view keeps a random subset of optical bands (>= this share)
    gain_jitter: float = 0.0  # std of a random per-band gain of optical views (calibration)
    shuffle_shards: int = 2  # shards whose samples are shuffled together (a resume point)
    shuffle_buffer: int = 256  # samples held in memory to shuffle a group (streamed)
    max_corrupt: int = 10  # corrupt samples skipped per (rank, worker) stream before aborting
    synthetic_size: int | None = None  # synthetic scene side in pixels (None: 2 x crop_size)
    synthetic_cache_mb: int = 512  # synthetic scenes kept per worker (0: regenerate each time)


class LossSection(_Section):
    pixel: bool = True
    pixel_weight: float = 1.0
    object: bool = True
    object_weight: float = 1.0
    image: bool = True
    image_weight: float = 1.0
    cross_modal: bool = True
    cross_modal_weight: float = 0.5
    # VICReg-style variance + covariance of the student's embedding (the encoder's dense
    # output, before the heads): keeps every dimension in use (docs/training.md).
    variance: bool = False
    variance_weight: float = 1.0
    variance_target: float = 1.0  # std each dimension is pushed up to (hinge)
    covariance_weight: float = 0.04  # relative to variance_weight (VICReg: 25 : 1)
    # Spectral reconstruction: every token of the student's embedding predicts each input
    # band's normalised patch mean and std (any band set, through the band descriptors).
    reconstruction: bool = False
    reconstruction_weight: float = 1.0
    temperature: float = 0.1
    image_symmetric: bool = True
    n_prototypes: int = 16
    sinkhorn_iters: int = 3
    sinkhorn_epsilon: float = 0.05
    prototype_momentum: float = 0.99
    head_hidden_dim: int = 512
    head_dim: int = 128


class OptimSection(_Section):
    lr: float = 1.0e-4  # peak learning rate of AdamW
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1.0e-8
    warmup_steps: int = 100  # optimizer steps
    total_steps: int = 1000  # optimizer steps
    min_lr_ratio: float = 0.01  # final lr / peak lr
    grad_clip: float = 1.0  # global norm; 0 disables


class TeacherSection(_Section):
    momentum_start: float = 0.996  # EMA momentum of the teacher, cosine-scheduled
    momentum_end: float = 1.0

    def momentum_at(self, step: int, total_steps: int) -> float:
        """DINO's schedule: cosine from ``momentum_start`` to ``momentum_end``."""
        frac = min(max(step / max(1, total_steps), 0.0), 1.0)
        cos = 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.momentum_end - (self.momentum_end - self.momentum_start) * cos


class DeepSpeedSection(_Section):
    zero_stage: int = 0
    bf16: bool = False
    micro_batch: int = 8  # samples per rank per micro-step (the data loader's batch)
    grad_accum: int = 1
    # Raw DeepSpeed keys merged last (e.g. offload settings); keys derived from other
    # sections are refused so that each value has one source.
    extra: dict[str, Any] = Field(default_factory=dict)


class RunSection(_Section):
    out_dir: str = "runs/tiny"
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    collapse_warn: float = (
        0.5  # warn when the embedding's effective rank falls below this x its best
    )
    ckpt_every: int = 500
    keep_ckpts: int = 3
    max_nonfinite_skips: int = 5  # abort after this many non-finite steps in a row
    # "no": start fresh (refused if out_dir holds checkpoints); "auto": newest complete
    # checkpoint of out_dir, if any; else the path of a checkpoint folder.
    resume: str = "no"


class PretrainConfig(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    loss: LossSection = Field(default_factory=LossSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    teacher: TeacherSection = Field(default_factory=TeacherSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    run: RunSection = Field(default_factory=RunSection)


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what is valid."""


# ------------------------------------------------------------------------ errors


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _walk(loc: tuple) -> tuple[str, str, list[str], Any]:
    """(dotted key, its section's dotted name, the section's keys, the field annotation)
    for a pydantic error location; stops at the first field that is not a section (or a
    list of sections, entered through the list index)."""
    model, parts, items = PretrainConfig, [], list(loc)
    while items:
        item = items.pop(0)
        names = list(model.model_fields)
        key = ".".join([*parts, str(item)])
        section = ".".join(parts)
        if item not in model.model_fields:
            return key, section, names, None
        tp = model.model_fields[item].annotation
        parts.append(str(item))
        args = typing.get_args(tp)
        if typing.get_origin(tp) is list and args and _is_section(args[0]) and items:
            if isinstance(items[0], int):
                parts.append(str(items.pop(0)))
                tp = args[0]
        if not _is_section(tp):
            return key if parts[-1] == str(item) else ".".join(parts), section, names, tp
        model = tp
    return ".".join(parts), ".".join(parts[:-1]), list(model.model_fields), model


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, _Section)


def _config_error(err: ValidationError) -> ConfigError:
    """Pydantic's first error as one line naming the dotted key and what is valid."""
    e = err.errors()[0]
    kind, value = e["type"], e["input"]
    key, section, names, tp = _walk(tuple(e["loc"]))
    if kind == "extra_forbidden":
        leaf = key.rsplit(".", 1)[-1]
        near = difflib.get_close_matches(leaf, names, n=1)
        prefix = f"{section}." if section else ""
        hint = f" (did you mean {prefix + near[0]!r}?)" if near else ""
        return ConfigError(
            f"unknown config key {key!r}{hint}; valid keys in "
            f"{section or 'the top level'}: {', '.join(names)}"
        )
    if kind in ("model_type", "dict_type"):
        return ConfigError(f"{key}: expected a mapping; got {value!r}")
    if kind == "literal_error":
        return ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
    if kind in ("list_type", "tuple_type"):
        return ConfigError(f"{key}: expected a list ({_type_name(tp)}); got {value!r}")
    if kind in ("missing", "too_long", "too_short") and typing.get_origin(tp) is tuple:
        n = len(typing.get_args(tp))
        return ConfigError(f"{key}: expected {n} values; got {list(value)}")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        want = " | ".join(_type_name(t) for t in _members(tp) if t is not type(None))
        got = f"{value!r} ({type(value).__name__})"
        return ConfigError(f"{key}: expected {want}; got {got}")
    return ConfigError(f"{key}: {e['msg']}")


# ------------------------------------------------------------------- dict <-> config


def config_to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """Plain YAML/JSON-able dict (tuples become lists)."""
    return cfg.model_dump(mode="json")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b.c=value`` (value parsed as a YAML scalar/flow) in ``tree``, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from e
        _set_dotted(tree, key.strip(), value)
    return tree


def resolve_config_path(path: str | Path) -> Path:
    """A path to a YAML file, or the name of a packaged config (``tiny_cpu``)."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = CONFIG_DIR / (p.name if p.suffix else f"{p.name}.yaml")
    if packaged.is_file():
        return packaged
    names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {str(path)!r} not found; packaged configs: {names}")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PretrainConfig:
    """Read YAML (``None``: the schema defaults), apply dotted overrides, check everything."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = resolve_config_path(path)
        source = str(p)
        tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    apply_overrides(tree, list(overrides or []))
    try:
        if not isinstance(tree, dict):
            raise ConfigError(f"config: expected a mapping; got {tree!r}")
        try:
            cfg = PretrainConfig.model_validate(tree)
        except ValidationError as e:
            raise _config_error(e) from None
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def save_config(cfg: PretrainConfig, path: str | Path) -> None:
    from rsfm_core.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------- checks and DeepSpeed


def validate(cfg: PretrainConfig) -> None:
    """Cross-field and range checks the type system cannot express."""
    checks = [
        (cfg.deepspeed.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage must be 0, 1, 2 or 3"),
        (cfg.deepspeed.micro_batch >= 1, "deepspeed.micro_batch must be >= 1"),
        (cfg.deepspeed.grad_accum >= 1, "deepspeed.grad_accum must be >= 1"),
        (cfg.loss.temperature > 0, "loss.temperature must be > 0"),
        (cfg.loss.n_prototypes >= 2, "loss.n_prototypes must be >= 2"),
        (cfg.loss.sinkhorn_iters >= 1, "loss.sinkhorn_iters must be >= 1"),
        (
            any(
                (
                    cfg.loss.pixel,
                    cfg.loss.object,
                    cfg.loss.image,
                    cfg.loss.cross_modal,
                    cfg.loss.reconstruction,
                )
            ),
            "at least one of loss.pixel/object/image/cross_modal/reconstruction must be true",
        ),
        (
            0 <= cfg.optim.warmup_steps < cfg.optim.total_steps,
            "optim.warmup_steps must be in [0, optim.total_steps)",
        ),
        (cfg.optim.lr > 0 and cfg.optim.grad_clip >= 0, "optim.lr > 0 and optim.grad_clip >= 0"),
        (0.0 <= cfg.data.modality_dropout < 1.0, "data.modality_dropout must be in [0, 1)"),
        (
            cfg.data.source != "shards" or bool(cfg.data.shards),
            "data.shards must be set when data.source is 'shards'",
        ),
        (
            cfg.data.source != "mixed"
            or (
                bool(cfg.data.mix)
                and all(e.weight > 0 for e in cfg.data.mix)
                and all(e.source == "synthetic" or e.shards for e in cfg.data.mix)
            ),
            "data.source 'mixed' needs data.mix entries with weight > 0 (and shards for "
            "shard sources)",
        ),
        (
            0.0 <= cfg.teacher.momentum_start <= cfg.teacher.momentum_end <= 1.0,
            "need 0 <= teacher.momentum_start <= teacher.momentum_end <= 1",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    clash = sorted(set(cfg.deepspeed.extra) & _DERIVED_DS_KEYS)
    if clash:
        raise ConfigError(
            f"deepspeed.extra must not set {clash}: they are derived from the other sections "
            "(deepspeed.micro_batch/grad_accum/bf16, optim.*)"
        )
    validate_model(cfg)


def validate_model(cfg: PretrainConfig) -> None:
    """The config against the model registry, before anything is built or launched:
    ``model.name`` is registered, ``model.overrides`` are valid config fields, every
    ``data.modalities`` entry is a modality the model declares, and views are whole
    tokens of the finest modality (``data.crop_size``); synthetic data needs equal
    patches. Builds no tensors (``rsfm_core.model.get_config``)."""
    from rsfm_core.model import get_config, list_models

    name = cfg.model.name
    try:
        model = get_config(name, **cfg.model.overrides)
    except KeyError:
        raise ConfigError(
            f"model.name: {name!r} is not a registered model; registered: {list_models()}"
        ) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.overrides: {e}") from None
    declared = model.modalities
    missing = [m for m in cfg.data.modalities if m not in declared]
    if missing:
        have = ", ".join(f"{n} ({m.sensor})" for n, m in declared.items())
        raise ConfigError(
            f"data.modalities {missing} are not modalities of model {name!r}, which declares "
            f"{have}; list only those, or declare more in model.overrides.modalities"
        )
    patches = {declared[m].patch for m in cfg.data.modalities}
    finest = max(patches, default=1)
    mixed = cfg.data.source == "mixed"
    crops = [("data.crop_size", cfg.data.crop_size)]
    if mixed:
        crops += [(f"data.mix[{i}].crop_size", e.crop_size) for i, e in enumerate(cfg.data.mix)
                  if e.crop_size is not None]  # fmt: skip
    for key, crop in crops:
        if crop % finest:
            raise ConfigError(
                f"{key}={crop} is not a multiple of the token size ({finest} px of the finest "
                f"of {cfg.data.modalities} in model {name!r}); views must be whole tokens"
            )
    synthetic = cfg.data.source == "synthetic" or (
        mixed and any(e.source == "synthetic" for e in cfg.data.mix)
    )
    if synthetic and len(patches) > 1:
        raise ConfigError(
            f"data.modalities {cfg.data.modalities} have different patches {sorted(patches)}; "
            "synthetic scenes render every sensor on one 10 m grid (use data.source=shards)"
        )


_DERIVED_DS_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "gradient_clipping", "bf16", "bfloat16", "fp16", "optimizer", "scheduler", "data_types",
}  # fmt: skip


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


CPU_ZERO = {"overlap_comm": False, "reduce_bucket_size": 10**6, "allgather_bucket_size": 10**6}


def deepspeed_config(cfg: PretrainConfig, world_size: int, cpu: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON for ``cfg`` on ``world_size`` data-parallel ranks.

    ``cpu=True`` (the engine passes it when DeepSpeed's accelerator is the CPU): ZeRO >= 1
    gets ``CPU_ZERO``, 1e6-element buckets and no comm overlap. With DeepSpeed's 5e8
    buckets and the overlap a GPU wants, a ZeRO-2 step of rsfm_tiny on the 2-core
    development machine took 4.5 s instead of 0.16 s. ``deepspeed.extra`` still wins.

    Keys verified against DeepSpeed 0.19.8 (runtime/constants.py, zero/config.py,
    runtime/engine.py ``_configure_basic_optimizer``). No ``scheduler`` block: the engine
    passes :class:`WarmupCosine`.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    ds, opt = cfg.deepspeed, cfg.optim
    # fp32 ZeRO-0: DeepSpeed wraps nothing around the optimizer (no overflow check), so the
    # engine skips non-finite steps through torch's fused AdamW and its ``found_inf`` flag
    fused_torch = ds.zero_stage == 0 and not ds.bf16
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(overlap_comm=True, contiguous_gradients=True)
        if cpu:
            zero.update(CPU_ZERO)
    if ds.zero_stage == 3:
        # Export to model.safetensors needs the full weights gathered on save.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    out = {
        "train_batch_size": ds.micro_batch * ds.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": ds.micro_batch,
        "gradient_accumulation_steps": ds.grad_accum,
        "gradient_clipping": opt.grad_clip,  # DeepSpeed's default is 1.0: always write it
        "zero_optimization": zero,
        "bf16": {"enabled": ds.bf16},
        "fp16": {"enabled": False},
        **(
            {"data_types": {"grad_accum_dtype": "fp32" if ds.zero_stage else "bf16"}}
            if ds.bf16
            else {}
        ),  # fmt: skip
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": opt.lr,
                "betas": list(opt.betas),
                "eps": opt.eps,
                "weight_decay": opt.weight_decay,  # per-group values (param_groups) win
                "torch_adam": cpu or fused_torch,
                **({"fused": True} if fused_torch else {}),
            },
        },
        "steps_per_print": 10**9,  # our engine logs metrics; silence DeepSpeed's own
        "wall_clock_breakdown": False,
    }
    return _merge(out, ds.extra)


class WarmupCosine:
    """The learning-rate schedule DeepSpeed steps (``deepspeed.initialize(lr_scheduler=
    lambda opt: WarmupCosine(opt, cfg.optim))``).

    After ``k`` optimizer steps, every group runs at ``ratio(k + 1) * its initial lr``:
    linear warmup ``s / W`` for step ``s < W = max(1, warmup_steps)``, then a cosine from 1
    to ``min_lr_ratio`` over the remaining ``total_steps - W`` steps (the ratios of
    DeepSpeed's ``WarmupCosineLR`` at iteration ``s``, without its two steps at ratio 0).
    ``step()`` advances one optimizer step; state is the step count (``state_dict``).
    """

    def __init__(self, optimizer: Any, optim: OptimSection):
        self.optimizer = optimizer
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.warmup = max(1, optim.warmup_steps)
        self.total = optim.total_steps
        self.min_ratio = optim.min_lr_ratio
        self.steps = 0
        self._apply()

    def ratio(self, step: int) -> float:
        """The LR ratio of optimizer step ``step`` (1-based)."""
        if step < self.warmup:
            return step / self.warmup
        progress = min(1.0, (step - self.warmup + 1) / max(1, self.total - self.warmup))
        return max(
            0.0, self.min_ratio + (1.0 - self.min_ratio) * (1 + math.cos(math.pi * progress)) / 2
        )

    def _apply(self) -> None:
        r = self.ratio(self.steps + 1)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * r

    def step(self, hold: bool = False) -> None:
        """One optimizer step; ``hold=True`` (``engine.step(lr_kwargs={"hold": True})``)
        leaves the schedule where it is, for a step the engine skipped."""
        if not hold:
            self.steps += 1
        self._apply()

    def get_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    get_last_lr = get_lr

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "last_batch_iteration" in state:  # a checkpoint of DeepSpeed's WarmupCosineLR
            self.steps = int(state["last_batch_iteration"]) - 1  # (it ran one iteration ahead)
        else:
            self.steps = int(state["steps"])
            self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()
