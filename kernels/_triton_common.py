"""Pieces every Triton kernel file shares: the portable exact dot and the GPU family.

Imported only where Triton is installed (the kernel files that need it import this
module behind their own ``find_spec("triton")`` check).
"""

from __future__ import annotations

import inspect

import torch
import triton
import triton.language as tl

from . import dispatch

# Triton decides interpret-or-compile when a kernel module is imported, so the kernel
# files read this once, at import, and their launchers refuse a later switch.
INTERPRETED = dispatch.interpreter_on()


def gpu_arch(device: torch.device) -> str:
    """Launch-config family: "sm90" (Hopper and newer), "sm80" (A100), "other", or "cpu"."""
    if device.type != "cuda":
        return "cpu"
    major, _ = torch.cuda.get_device_capability(device)
    return "sm90" if major >= 9 else "sm80" if major == 8 else "other"


# Portable float32 dot: `input_precision` (Triton >= 3.0) or the older `allow_tf32`. "ieee"
# keeps float32 exact (the interpreter and GPU agree); it only affects float32 operands.
if "input_precision" in inspect.signature(tl.dot).parameters:

    @triton.jit
    def dot(a, b):
        return tl.dot(a, b, input_precision="ieee")

else:  # pragma: no cover - Triton < 3.0

    @triton.jit
    def dot(a, b):
        return tl.dot(a, b, allow_tf32=False)
