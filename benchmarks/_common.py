"""Helpers every benchmark shares: device name, timing, tables, JSON with the environment.

Timing: on CUDA ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs, median);
on CPU ``time.perf_counter`` around a synchronous call (median of repeats). Numbers from
different devices are never compared: every table and JSON names its device.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def import_kernels(module: str = "rsfm_kernels"):
    """Import ``rsfm_kernels[.<op>]``; from a bare checkout (not pip-installed) load ``kernels/``."""
    if "rsfm_kernels" not in sys.modules and importlib.util.find_spec("rsfm_kernels") is None:
        spec = importlib.util.spec_from_file_location(
            "rsfm_kernels", REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")],
        )  # fmt: skip
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["rsfm_kernels"] = pkg
        spec.loader.exec_module(pkg)
    return importlib.import_module(module)


# ---------------------------------------------------------------- process memory (Linux /proc)


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next((int(x.split()[1]) for x in f if x.startswith(key + ":")), None)
    except OSError:
        return None


def reset_peak_rss() -> None:
    """Start this process's peak RSS afresh (Linux: VmHWM := VmRSS). Needed because
    ``ru_maxrss`` survives fork + exec: a case process started by a parent that had just
    written a 3 GB scene reported the parent's 3.1 GB as its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak RSS since :func:`reset_peak_rss` (VmHWM), else ``ru_maxrss``."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024.0


def rss_mb() -> float:
    """This process's current resident memory (VmRSS); 0 where /proc is missing."""
    return (_status_kib("VmRSS") or 0) / 1024.0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device | None = None) -> str:
    device = device or default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device | None = None) -> dict[str, Any]:
    """What a reader needs to interpret the numbers: device, versions, date, revision."""
    device = device or default_device()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_revision": _git_revision(),
    }
    if device.type == "cuda":
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    return env


def time_ms(
    fn: Callable[[], Any],
    device: torch.device,
    warmup: int = 25,
    rep: int = 100,
    grad_to_none: Sequence[torch.Tensor] | None = None,
) -> float:
    """Median milliseconds per call. ``warmup``/``rep``: milliseconds on CUDA, calls on CPU."""
    if device.type == "cuda":
        import triton.testing

        return float(
            triton.testing.do_bench(
                fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median"
            )
        )
    for _ in range(max(1, min(warmup, 3))):
        fn()
    times = []
    for _ in range(max(3, min(rep, 10))):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device: torch.device, nbytes: int | None = None) -> float:
    """Measured device copy bandwidth in GB/s (read + write), the roofline of memory-bound kernels."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 26)
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), device)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0:
            return "0"
        mag = abs(v)
        return f"{v:.3g}" if mag < 1e-2 or mag >= 1e4 else f"{v:.2f}" if mag < 100 else f"{v:.0f}"
    return str(v)


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None
) -> None:
    """A plain fixed-width table; missing cells print as '-'."""
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_json(
    path: str | Path, payload: dict[str, Any], device: torch.device | None = None
) -> Path:
    """Write ``payload`` with an ``environment`` block (device, date, versions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {"environment": environment(device), **payload}
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny shapes (the only mode on CPU)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p
