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
- The optimizer is the client's ``torch.optim.AdamW`` (param groups without weight decay
  for norms/biases/embeddings need the client); the JSON has no ``optimizer`` block.
- The learning-rate schedule is DeepSpeed's ``WarmupCosineLR`` from the JSON: linear
  warmup from 0 over ``optim.warmup_steps``, cosine to ``optim.min_lr_ratio * lr`` at
  ``optim.total_steps``. It scales the client optimizer's own ``lr``, steps once per
  optimizer step (not per micro-step) and is saved in DeepSpeed checkpoints for free.
- PyYAML reads ``3e-4`` (no dot) as a string: float fields accept such strings when
  ``float()`` parses them. Nothing else is coerced (``1`` is not a bool, ``1.0`` not an int).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class ModelSection:
    name: str = "rsfm_tiny"  # a key of rsfm_core's model registry
    overrides: dict[str, Any] = field(default_factory=dict)  # kwargs for build_model


@dataclass
class DataSection:
    source: Literal["synthetic", "shards"] = "synthetic"
    shards: str | None = None  # shard URL/glob/folder when source == "shards"
    modalities: list[str] = field(default_factory=lambda: ["s2", "s1"])
    crop_size: int = 64  # pixels per side of each view (at the finest modality's GSD)
    dates_per_view: int = 4
    modality_dropout: float = 0.3  # probability that a view loses one of its modalities
    workers: int = 2
    synthetic_samples: int = 256  # scenes per epoch of the synthetic source
    min_overlap: float = 0.25  # least fraction of a view's tokens that both views cover
    rotate_flip: bool = True  # random flips and 90-degree rotations, per view
    shuffle_shards: int = 2  # shards whose samples are shuffled together (the shuffle buffer)
    max_corrupt: int = 10  # corrupt samples skipped per (rank, worker) stream before aborting
    synthetic_size: int | None = None  # synthetic scene side in pixels (None: 2 x crop_size)
    synthetic_cache_mb: int = 512  # synthetic scenes kept per worker (0: regenerate each time)


@dataclass
class LossSection:
    pixel: bool = True
    pixel_weight: float = 1.0
    object: bool = True
    object_weight: float = 1.0
    image: bool = True
    image_weight: float = 1.0
    cross_modal: bool = True
    cross_modal_weight: float = 0.5
    temperature: float = 0.1
    image_symmetric: bool = True
    n_prototypes: int = 16
    sinkhorn_iters: int = 3
    sinkhorn_epsilon: float = 0.05
    prototype_momentum: float = 0.99
    head_hidden_dim: int = 512
    head_dim: int = 128


@dataclass
class OptimSection:
    lr: float = 1.0e-4  # peak learning rate of AdamW
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1.0e-8
    warmup_steps: int = 100  # optimizer steps
    total_steps: int = 1000  # optimizer steps
    min_lr_ratio: float = 0.01  # final lr / peak lr
    grad_clip: float = 1.0  # global norm; 0 disables


@dataclass
class TeacherSection:
    momentum_start: float = 0.996  # EMA momentum of the teacher, cosine-scheduled
    momentum_end: float = 1.0

    def momentum_at(self, step: int, total_steps: int) -> float:
        """DINO's schedule: cosine from ``momentum_start`` to ``momentum_end``."""
        frac = min(max(step / max(1, total_steps), 0.0), 1.0)
        cos = 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.momentum_end - (self.momentum_end - self.momentum_start) * cos


@dataclass
class DeepSpeedSection:
    zero_stage: int = 0
    bf16: bool = False
    micro_batch: int = 8  # samples per rank per micro-step (the data loader's batch)
    grad_accum: int = 1
    # Raw DeepSpeed keys merged last (e.g. offload settings); keys derived from other
    # sections are refused so that each value has one source.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSection:
    out_dir: str = "runs/tiny"
    seed: int = 0
    deterministic: bool = False
    log_every: int = 10
    ckpt_every: int = 500
    keep_ckpts: int = 3
    max_nonfinite_skips: int = 5  # abort after this many non-finite steps in a row
    # "no": start fresh (refused if out_dir holds checkpoints); "auto": newest complete
    # checkpoint of out_dir, if any; else the path of a checkpoint folder.
    resume: str = "no"


@dataclass
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    run: RunSection = field(default_factory=RunSection)


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key and what is valid."""


# ------------------------------------------------------------------------ type checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (and lightly converted), or raise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{key}: {value!r} is not {_type_name(tp)}"
        )
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list ({_type_name(tp)}); got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values; got {list(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping; got {value!r}")
        return dict(value)
    return _coerce_scalar(value, tp, key)


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{key}: unsupported annotation {tp!r} in the schema")
    raise ConfigError(f"{key}: expected {_type_name(tp)}; got {value!r} ({type(value).__name__})")


# ------------------------------------------------------------------- dict <-> dataclass


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix + near[0]!r}?)" if near else ""
            raise ConfigError(
                f"unknown config key {full!r}{hint}; valid keys in "
                f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _from_dict(tp, {} if value is None else value, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def config_to_dict(cfg: PretrainConfig) -> dict[str, Any]:
    """Plain YAML/JSON-able dict (tuples become lists)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


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
        cfg = _from_dict(PretrainConfig, tree, "")
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def save_config(cfg: PretrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


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
            any((cfg.loss.pixel, cfg.loss.object, cfg.loss.image, cfg.loss.cross_modal)),
            "at least one of loss.pixel/object/image/cross_modal must be true",
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


_DERIVED_DS_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
    "gradient_clipping", "bf16", "bfloat16", "fp16", "optimizer", "scheduler",
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
    lr_schedules.py). No ``optimizer`` block: the engine passes ``torch.optim.AdamW``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    ds, opt = cfg.deepspeed, cfg.optim
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
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": opt.total_steps,
                "warmup_num_steps": max(1, opt.warmup_steps),  # DeepSpeed requires > 0
                "warmup_min_ratio": 0.0,
                "warmup_type": "linear",
                "cos_min_ratio": opt.min_lr_ratio,
            },
        },
        "steps_per_print": 10**9,  # our engine logs metrics; silence DeepSpeed's own
        "wall_clock_breakdown": False,
    }
    return _merge(out, ds.extra)
