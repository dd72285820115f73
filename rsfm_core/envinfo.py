"""What ``rsfm info`` reports: versions, devices, kernel backends, sensors.

Package versions come from installed metadata (``importlib.metadata``), so optional
packages such as DeepSpeed are never imported just to be listed.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

PACKAGES = (
    "torch",
    "triton",
    "deepspeed",
    "rasterio",
    "numpy",
    "safetensors",
    "einops",
    "xformers",
)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except ImportError:
        out["gdal"] = None
    return out


def devices() -> list[str]:
    rows = [f"cpu: {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append(
                f"cuda:{i}: {p.name}, compute capability {p.major}.{p.minor}, "
                f"{p.total_memory / 2**30:.1f} GiB"
            )
    else:
        rows.append("cuda: not available (torch built for CPU, or no GPU/driver)")
    return rows


def report() -> str:
    from rsfm_kernels.info import report as kernel_report

    from . import sensors

    lines = ["versions:"]
    for k, v in versions().items():
        lines.append(f"  {k:<12} {v if v is not None else 'not installed'}")
    lines.append("devices:")
    lines += [f"  {r}" for r in devices()]
    interp = os.environ.get("TRITON_INTERPRET", "0")
    lines.append(f"kernel backends (TRITON_INTERPRET={interp}):")
    lines += [f"  {r}" for r in kernel_report().splitlines()]
    lines.append("sensors:")
    for n in sensors.names():
        s = sensors.get(n)
        lines.append(f"  {n:<22} {len(s.bands):>3} bands  {s.gsd_m:>5g} m  {s.units}")
    return "\n".join(lines)
