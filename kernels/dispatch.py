"""Backend registry for rsfm's kernels, after xformers' dispatch pattern.

Every op (``attention``, ``spectral_embed``, ``info_nce``) registers one or more
backends. A backend answers ``not_supported_reasons(inputs)`` with a list of plain
sentences; an empty list means it can run those inputs. Selection walks the backends in
priority order and takes the first with no reasons. Nothing is probed at import time and
nothing warns: the choice is logged once per (op, backend, device).

Forcing a backend:
- the op's ``backend=`` argument, or
- the environment: ``RSFM_BACKEND_<OP>`` (e.g. ``RSFM_BACKEND_ATTENTION=sdpa``), else
  ``RSFM_BACKEND`` (applies to every op that has a backend of that name).
A forced backend that cannot run raises :class:`BackendUnavailable` listing every reason;
it never falls back silently.

Decision: Triton backends are chosen automatically only for CUDA tensors. On CPU they run
only when forced and ``TRITON_INTERPRET=1`` was set before the kernels were imported
(the interpreter is for tests: ~2 ms per program step). See ``backend_device_reasons``.

``python -m rsfm_kernels.info`` prints each backend as available or with its reasons.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("rsfm_kernels")

Inputs = Mapping[str, Any]


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run the given inputs; the message lists every reason."""


@dataclass
class Backend:
    op: str
    name: str
    fn: Callable[..., Any]
    reasons: Callable[[Inputs | None], list[str]]
    priority: int
    description: str = ""
    # False: never picked automatically for CPU tensors (Triton under the interpreter).
    auto_on_cpu: bool = True
    # Reasons that only keep the backend from being picked automatically (it still runs
    # when forced), e.g. inputs it supports but serves slowly.
    auto_reasons: Callable[[Inputs], list[str]] | None = None

    def not_supported_reasons(
        self, inputs: Inputs | None = None, forced: bool = False
    ) -> list[str]:
        """Why this backend cannot run ``inputs`` (``None``: on this machine at all)."""
        out = list(self.reasons(inputs))
        if inputs is not None and not forced and self.auto_reasons is not None:
            out += self.auto_reasons(inputs)
        if inputs is not None and not forced and not self.auto_on_cpu:
            dev = device_of(inputs)
            if dev is not None and dev.type == "cpu":
                out.append(
                    f"{self.name} is not chosen automatically for CPU tensors; "
                    f"force it with backend='{self.name}' (needs TRITON_INTERPRET=1)"
                )
        return out


@dataclass
class _Registry:
    ops: dict[str, list[Backend]] = field(default_factory=dict)
    logged: set[tuple[str, str, str]] = field(default_factory=set)


_REG = _Registry()


def register(
    op: str,
    name: str,
    fn: Callable[..., Any],
    reasons: Callable[[Inputs | None], list[str]],
    priority: int,
    description: str = "",
    auto_on_cpu: bool = True,
    auto_reasons: Callable[[Inputs], list[str]] | None = None,
) -> Backend:
    """Register (or replace) backend ``name`` of ``op``; lower ``priority`` is tried first."""
    b = Backend(op, name, fn, reasons, priority, description, auto_on_cpu, auto_reasons)
    lst = [x for x in _REG.ops.get(op, []) if x.name != name]
    lst.append(b)
    lst.sort(key=lambda x: x.priority)
    _REG.ops[op] = lst
    clear_choices(op)  # a cached choice may no longer be the first that can run
    return b


def ops() -> list[str]:
    return sorted(_REG.ops)


def backends(op: str) -> list[Backend]:
    if op not in _REG.ops:
        raise KeyError(f"unknown kernel op {op!r}; known: {ops()}")
    return list(_REG.ops[op])


def forced_backend(op: str, backend: str | None = None) -> str | None:
    """The backend forced by argument or environment, or ``None`` for automatic choice."""
    if backend:
        return backend
    env = os.environ.get(f"RSFM_BACKEND_{op.upper()}")
    if env:
        return env
    env = os.environ.get("RSFM_BACKEND")
    if env and any(b.name == env for b in _REG.ops.get(op, [])):
        return env
    return None


def select(op: str, inputs: Inputs, backend: str | None = None) -> Backend:
    """Pick the backend for ``inputs``: the forced one (or raise), else the first that can run."""
    cands = backends(op)
    want = forced_backend(op, backend)
    if want is not None:
        match = [b for b in cands if b.name == want]
        if not match:
            raise BackendUnavailable(
                f"{op}: no backend named {want!r}; registered: {[b.name for b in cands]}"
            )
        reasons = match[0].not_supported_reasons(inputs, forced=True)
        if reasons:
            raise BackendUnavailable(
                f"{op}: forced backend {want!r} cannot run these inputs: " + "; ".join(reasons)
            )
        chosen = match[0]
    else:
        all_reasons: dict[str, list[str]] = {}
        chosen = None
        for b in cands:
            r = b.not_supported_reasons(inputs)
            if not r:
                chosen = b
                break
            all_reasons[b.name] = r
        if chosen is None:
            detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in all_reasons.items())
            raise BackendUnavailable(f"{op}: no backend can run these inputs ({detail})")
    dev = device_of(inputs)
    key = (op, chosen.name, str(dev.type if dev is not None else "?"))
    if key not in _REG.logged:
        _REG.logged.add(key)
        log.info("%s: using backend %r on %s", op, chosen.name, key[2])
    return chosen


# ---------------------------------------------------------------- cached choices

# (op, key) -> backend name. An op's key holds everything its backends' reasons read
# (the forced name, devices, dtypes, ranks, the shapes that matter), so a hit is exact;
# errors (no backend can run) are raised, never cached; registering a backend of an op
# forgets that op's choices. Bounded: past _CHOICES_MAX entries the cache starts over.
_CHOICES: dict[tuple, str] = {}
_CHOICES_MAX = 4096


def choose(op: str, key: tuple, inputs: Callable[[], Inputs], forced: str | None) -> Backend:
    """:func:`select` once per ``(op, key)``, then a dict look-up. ``inputs()`` builds the
    inputs the reasons are asked about (the real ones, or empty probes with the key's
    facts) only on a miss. Ops call this from a ``torch.compiler.assume_constant_result``
    function of the key, so under ``torch.compile`` the choice is made at trace time."""
    name = _CHOICES.get((op, key))
    if name is None:
        if len(_CHOICES) >= _CHOICES_MAX:
            _CHOICES.clear()
        name = _CHOICES[(op, key)] = select(op, inputs(), forced).name
    return next(b for b in _REG.ops[op] if b.name == name)


def clear_choices(op: str | None = None) -> None:
    """Forget the cached choices of ``op`` (default: of every op)."""
    for k in [k for k in _CHOICES if op is None or k[0] == op]:
        del _CHOICES[k]


# ---------------------------------------------------------------- shared reason helpers


def device_of(inputs: Inputs | None) -> torch.device | None:
    if inputs is None:
        return None
    for v in inputs.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return None


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_reasons() -> list[str]:
    """Why Triton kernels cannot run on this machine at all (empty: they can)."""
    if importlib.util.find_spec("triton") is None:
        return ["triton is not installed (pip install triton; Linux only)"]
    if not torch.cuda.is_available() and not interpreter_on():
        return [
            "no CUDA device, and TRITON_INTERPRET=1 is not set (the CPU interpreter is for tests)"
        ]
    return []


def backend_device_reasons(inputs: Inputs | None) -> list[str]:
    """Reasons shared by all Triton backends: installed, and tensors where kernels can run."""
    out = triton_reasons()
    if out or inputs is None:
        return out
    dev = device_of(inputs)
    if dev is not None and dev.type == "cpu" and not interpreter_on():
        out.append("tensors are on the CPU and TRITON_INTERPRET=1 is not set")
    elif dev is not None and dev.type not in ("cpu", "cuda"):
        out.append(f"tensors are on {dev.type}; Triton backends need CUDA (or the CPU interpreter)")
    return out


def dtype_reasons(
    inputs: Inputs, names: tuple[str, ...], allowed: tuple[torch.dtype, ...]
) -> list[str]:
    out = []
    for n in names:
        t = inputs.get(n)
        if isinstance(t, torch.Tensor) and t.dtype not in allowed:
            out.append(f"{n} has dtype {t.dtype}; supported: {[str(d) for d in allowed]}")
    return out


def min_capability_reasons(inputs: Inputs | None, major: int, minor: int = 0) -> list[str]:
    dev = device_of(inputs) if inputs is not None else None
    if dev is None or dev.type != "cuda":
        return []
    cap = torch.cuda.get_device_capability(dev)
    if cap < (major, minor):
        return [f"GPU compute capability {cap[0]}.{cap[1]} < required {major}.{minor}"]
    return []


def describe() -> list[dict[str, Any]]:
    """One row per (op, backend): name, priority, available or the reasons why not."""
    rows = []
    for op in ops():
        for b in _REG.ops[op]:
            reasons = b.not_supported_reasons(None)
            rows.append(
                {
                    "op": op,
                    "backend": b.name,
                    "priority": b.priority,
                    "available": not reasons,
                    "reasons": reasons,
                    "description": b.description,
                }
            )
    return rows
