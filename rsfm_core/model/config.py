"""Model configuration: the schema of ``config.json`` (dataclasses; unknown keys raise).

A :class:`ModelConfig` declares the model's modalities (name -> sensor, patch size,
spectral groups) and carries a copy of every declared sensor (``Sensor.to_dict``): band
descriptors and normalisation statistics travel with a checkpoint, so later edits to the
live sensor registry never change a trained model. ``__post_init__`` fills every derived
field (sensor copies, hypernetwork kernel sizes, spectral-group edges) so that the saved
JSON is explicit and ``from_dict(to_dict(c)) == c``.

Every field is checked for its type and range where the config is made (also when it
comes from a checkpoint's ``config.json``): a wrong value raises naming the key (``heads
must be an int >= 1, got 0``) instead of failing later as a ``ZeroDivisionError`` or a
``TypeError`` deep in ``torch.nn``. Nothing is coerced: ``"2"`` and ``32.0`` are not ints,
``"no"`` is not a bool (a non-empty string is truthy: it would turn a bias on).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import sensors as _sensors

FORMAT = "rsfm-encoder"
FORMAT_VERSION = 1
MAX_KERNEL = 8  # hypernetwork kernels above 8 x 8 are resized up to the patch (see docs)


def _check_int(where: str, key: str, v: Any, lo: int, optional: bool = False) -> None:
    if optional and v is None:
        return
    if not isinstance(v, numbers.Integral) or isinstance(v, bool):
        raise TypeError(f"{where}: {key} must be an int, got {v!r} ({type(v).__name__})")
    if v < lo:
        raise ValueError(f"{where}: {key} must be an int >= {lo}, got {v}")


def _check_number(where: str, key: str, v: Any) -> None:
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise TypeError(f"{where}: {key} must be a number, got {v!r} ({type(v).__name__})")


def _check_type(where: str, key: str, v: Any, kind: type | tuple, what: str) -> None:
    if not isinstance(v, kind):
        raise TypeError(f"{where}: {key} must be {what}, got {v!r} ({type(v).__name__})")


def _from_dict_strict(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, Mapping):
        raise TypeError(f"{where} must be a mapping, got {d!r} ({type(d).__name__})")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {sorted(names)}")
    return cls(**d)


@dataclass
class ModalityConfig:
    """One input modality. ``sensor``: the registry name of the sensor it is declared for
    (data of another sensor may be fed under the same modality name, e.g. S2 L1C into
    ``s2``); ``patch``: pixels per token side; ``groups``: spectral groups G (tokens per
    patch; > 1 needs wavelengths); ``kernel_size``: side of the hypernetwork's generated
    kernel (None: ``min(patch, 8)``); ``group_edges_nm``: G - 1 increasing wavelength
    edges between groups (None: an equal-count split of the sensor's bands)."""

    sensor: str
    patch: int = 4
    groups: int = 1
    kernel_size: int | None = None
    group_edges_nm: list[float] | None = None

    def check(self, name: str) -> None:
        """Types and ranges of every field (``name``: the modality, for messages)."""
        where = f"modality {name!r}"
        _check_type(where, "sensor", self.sensor, str, "a sensor name (str)")
        _check_int(where, "patch", self.patch, 1)
        _check_int(where, "groups", self.groups, 1)
        _check_int(where, "kernel_size", self.kernel_size, 1, optional=True)
        edges = self.group_edges_nm
        if edges is not None:
            _check_type(where, "group_edges_nm", edges, (list, tuple), "a list of numbers")
            for e in edges:
                _check_number(where, "group_edges_nm", e)

    def resolve(self, name: str, sensor: _sensors.Sensor) -> None:
        self.check(name)
        if self.kernel_size is None:
            self.kernel_size = min(self.patch, MAX_KERNEL)
        if self.groups == 1:
            self.group_edges_nm = []
            return
        if sensor.is_sar:
            raise ValueError(
                f"modality {name!r}: spectral groups need wavelengths; {sensor.name} is SAR "
                "(use groups=1)"
            )
        if self.group_edges_nm is None or len(self.group_edges_nm) == 0:
            self.group_edges_nm = equal_count_edges(
                [b.center_nm for b in sensor.bands], self.groups
            )
        edges = [float(e) for e in self.group_edges_nm]
        if len(edges) != self.groups - 1 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(
                f"modality {name!r}: group_edges_nm must be {self.groups - 1} increasing "
                f"wavelengths (nm), got {edges}"
            )
        self.group_edges_nm = edges


def equal_count_edges(centers_nm: list[float], groups: int) -> list[float]:
    """Edges (nm) splitting the bands, sorted by wavelength, into ``groups`` contiguous
    chunks of (nearly) equal band count; each edge is the midpoint between two chunks."""
    c = np.sort(np.asarray(centers_nm, dtype=np.float64))
    if c.size < groups:
        raise ValueError(f"cannot split {c.size} bands into {groups} spectral groups")
    chunks = np.array_split(c, groups)
    return [round(float((a[-1] + b[0]) / 2), 3) for a, b in zip(chunks, chunks[1:])]


def default_modalities() -> dict[str, ModalityConfig]:
    """S2 L2A and S1 at 10 m (patch 4), EnMAP resampled to 10 m (patch 4, 4 groups) and
    1 m RGB (patch 40): every one gives 40 m tokens."""
    return {
        "s2": ModalityConfig("sentinel2_l2a", patch=4),
        "s1": ModalityConfig("sentinel1_grd", patch=4),
        "hs": ModalityConfig("enmap", patch=4, groups=4),
        "rgb": ModalityConfig("rgb_highres", patch=40),
    }


@dataclass
class ModelConfig:
    """The encoder. ``dim``/``depth``/``heads``: the spatial ViT; ``fusion_depth``: blocks
    of the per-location temporal/multimodal transformer (same width and heads);
    ``hyper_dim``: width of the band hypernetwork; ``shared_spatial``: one spatial encoder
    for all modalities (True) or one per modality; ``attn_backend``/``embed_backend``:
    forced ``rsfm_kernels`` backends (None: automatic); ``min_valid_frac``: a token is
    valid when more than this fraction of its patch pixels are; ``date_freqs``: harmonics
    of the day-of-year encoding."""

    name: str = "custom"
    dim: int = 128
    depth: int = 4
    heads: int = 4
    fusion_depth: int = 2
    mlp_ratio: float = 4.0
    hyper_dim: int = 64
    qkv_bias: bool = True
    modalities: dict[str, ModalityConfig] = field(default_factory=default_modalities)
    sensors: dict[str, dict] = field(default_factory=dict)
    shared_spatial: bool = True
    grad_checkpointing: bool = False
    attn_backend: str | None = None
    embed_backend: str | None = None
    min_valid_frac: float = 0.0
    date_freqs: int = 4

    def _check(self) -> None:
        """Types and ranges of every top-level field."""
        w = "model config"
        _check_type(w, "name", self.name, str, "a str")
        for key, lo in (("dim", 1), ("depth", 1), ("heads", 1), ("fusion_depth", 0),
                        ("hyper_dim", 1), ("date_freqs", 0)):  # fmt: skip
            _check_int(w, key, getattr(self, key), lo)
        _check_number(w, "mlp_ratio", self.mlp_ratio)
        if not self.mlp_ratio > 0:
            raise ValueError(f"{w}: mlp_ratio must be a number > 0, got {self.mlp_ratio}")
        for key in ("qkv_bias", "shared_spatial", "grad_checkpointing"):
            _check_type(w, key, getattr(self, key), bool, "a bool (true/false)")
        for key in ("attn_backend", "embed_backend"):
            _check_type(w, key, getattr(self, key), (str, type(None)), "a backend name or null")
        _check_number(w, "min_valid_frac", self.min_valid_frac)
        if not 0.0 <= self.min_valid_frac < 1.0:
            raise ValueError(f"{w}: min_valid_frac must be in [0, 1), got {self.min_valid_frac}")
        _check_type(w, "modalities", self.modalities, Mapping, "a mapping name -> modality")
        _check_type(w, "sensors", self.sensors, Mapping, "a mapping name -> sensor dict")
        for name, d in self.sensors.items():
            _check_type(w, f"sensors[{name!r}]", d, Mapping, "a sensor dict")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not self.modalities:
            raise ValueError("a model needs at least one modality")

    def __post_init__(self) -> None:
        self._check()
        mods = {}
        for name, m in self.modalities.items():
            if isinstance(m, Mapping):
                m = _from_dict_strict(ModalityConfig, dict(m), f"modality {name!r}")
            elif not isinstance(m, ModalityConfig):
                raise TypeError(f"modality {name!r}: expected ModalityConfig or dict, got {m!r}")
            mods[name] = dataclasses.replace(m)
            mods[name].check(name)
        self.modalities = mods
        self.sensors = dict(self.sensors)
        for name, m in self.modalities.items():
            if m.sensor not in self.sensors:
                self.sensors[m.sensor] = _sensors.get(m.sensor).to_dict()
            m.resolve(name, self.sensor(m.sensor))

    def sensor(self, name: str) -> _sensors.Sensor:
        """The checkpoint's copy of sensor ``name``."""
        return _sensors.Sensor.from_dict(self.sensors[name])

    @property
    def kernel_sizes(self) -> list[int]:
        return sorted({m.kernel_size for m in self.modalities.values()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelConfig:
        return _from_dict_strict(ModelConfig, d, "model config")
