"""Pieces every Triton kernel file shares: the portable exact dot, the GPU family, the
autotuning switch, the scratch allocator of in-kernel tensor descriptors, and the offline
compile (Triton + ptxas for a GPU target, no GPU needed).

Imported only where Triton is installed (the kernel files that need it import this
module behind their own ``find_spec("triton")`` check).
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import dispatch

# Triton decides interpret-or-compile when a kernel module is imported, so the kernel
# files read this once, at import, and their launchers refuse a later switch.
INTERPRETED = dispatch.interpreter_on()

# ---------------------------------------------------------------- GPU families


def arch_family(major: int, minor: int) -> str:
    """Launch-config family of a compute capability.

    "sm80" (A100, A30, Jetson Orin 8.7: 163 KB shared memory per block), "sm86" (8.6 and
    8.9: RTX 30/40, A10, L4, L40: 99 KB), "sm90" (H100/H200: 227 KB, wgmma, TMA),
    "sm100" (B200/B300, 10.x: 227 KB, tcgen05, TMA), "sm120" (RTX 50, RTX PRO 6000,
    GB10, 12.x: 99 KB, mma.sync like Ada), "other" (anything else, including 11.x: the
    sm86 tables, which fit every GPU with at least 99 KB per block).
    """
    if major == 8:
        return "sm86" if minor in (6, 9) else "sm80"
    return {9: "sm90", 10: "sm100", 12: "sm120"}.get(major, "other")


def gpu_arch(device: torch.device) -> str:
    """The :func:`arch_family` of ``device``, or "cpu"."""
    if device.type != "cuda":
        return "cpu"
    return arch_family(*torch.cuda.get_device_capability(device))


_SM_COUNT: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 4 elsewhere (interpreter tests)."""
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


# ---------------------------------------------------------------- autotuning switch


def autotune_enabled() -> bool:
    """Autotune on GPU unless ``RSFM_AUTOTUNE=0``; never under the interpreter (no timer).

    Decision: on by default (issue 15): each kernel's space is a few configs per
    architecture, every one checked by offline compile, and the timings persist in
    Triton's cache directory, so tuning costs seconds once per shape bucket and machine.
    ``RSFM_AUTOTUNE=0`` pins the table config (reproducible, no tuning time).
    """
    return not INTERPRETED and os.environ.get("RSFM_AUTOTUNE", "1") not in ("", "0")


# ---------------------------------------------------------------- tensor descriptors


def _torch_alloc(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def ensure_allocator() -> None:
    """In-kernel tensor descriptors (``tl.make_tensor_descriptor``) write each program's
    descriptor to a global scratch buffer that Triton asks an allocator for. Set a torch
    one unless the caller already set theirs (Triton keeps it in a context variable, so
    this runs before every launch that may need it: a dictionary look-up)."""
    try:
        from triton.runtime._allocation import NullAllocator, _allocator

        if not isinstance(_allocator.get(), NullAllocator):
            return
    except ImportError:  # pragma: no cover - a Triton that moved it: set ours
        pass
    if INTERPRETED:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8))
    else:
        triton.set_allocator(_torch_alloc)


def tma_compatible(t: torch.Tensor) -> bool:
    """Whether a tensor can back a TMA descriptor: 16-byte aligned base, unit last stride,
    other strides positive multiples of 16 bytes (size-1 dimensions are exempt: see
    :func:`tma_strides`)."""
    elt = t.element_size()
    if t.data_ptr() % 16 or t.stride(-1) != 1:
        return False
    return all(
        n == 1 or (s > 0 and (s * elt) % 16 == 0) for n, s in zip(t.shape[:-1], t.stride()[:-1])
    )


def tma_strides(t: torch.Tensor) -> tuple[int, ...]:
    """``t.stride()`` with each size-1 dimension's stride (never used to address, but
    checked by the descriptor) replaced by a valid one (the next dimension's extent)."""
    out = list(t.stride())
    for i in range(t.dim() - 2, -1, -1):
        if t.shape[i] == 1:
            out[i] = out[i + 1] * max(t.shape[i + 1], 1)
    return tuple(out)


# ---------------------------------------------------------------- exact float32 dot

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


@triton.jit
def load_tile(ptrs, rows_ok, cols_ok, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """2-D load, masked only along the dimensions that can be ragged."""
    if EVEN_ROWS:
        if EVEN_COLS:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=cols_ok[None, :], other=0.0)
    else:
        if EVEN_COLS:
            x = tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)
    return x


@triton.jit
def store_tile(ptrs, x, rows_ok, cols_ok, EVEN_ROWS: tl.constexpr, EVEN_COLS: tl.constexpr):
    """2-D store, masked only along the dimensions that can be ragged."""
    if EVEN_ROWS:
        if EVEN_COLS:
            tl.store(ptrs, x)
        else:
            tl.store(ptrs, x, mask=cols_ok[None, :])
    else:
        if EVEN_COLS:
            tl.store(ptrs, x, mask=rows_ok[:, None])
        else:
            tl.store(ptrs, x, mask=rows_ok[:, None] & cols_ok[None, :])


# ---------------------------------------------------------------- offline compile

# Shared memory one block may use (the opt-in maximum), bytes, per family (CUDA C++
# Programming Guide, "Technical Specifications per Compute Capability").
SMEM_PER_BLOCK = {
    "sm80": 166_912,  # 163 KB
    "sm86": 101_376,  # 99 KB
    "sm90": 232_448,  # 227 KB
    "sm100": 232_448,  # 227 KB
    "sm120": 101_376,  # 99 KB
}
# The capability each family is compiled for offline.
FAMILY_CAPABILITY = {"sm80": 80, "sm86": 86, "sm90": 90, "sm100": 100, "sm120": 120}
REGS_PER_SM = 65_536  # every family above; at most 255 per thread


@dataclass(frozen=True)
class Usage:
    """What ptxas reports for one compiled kernel."""

    shared_bytes: int  # dynamic shared memory Triton requests at launch
    registers: int | None  # per thread; None when ptxas could not be run again
    spill_bytes: int | None  # spill stores + spill loads
    warnings: tuple[str, ...] = ()  # ptxas performance warnings (e.g. wgmma serialised)
    scratch_bytes: int = 0  # global scratch per program (in-kernel tensor descriptors)
    atomics: tuple[str, ...] = ()  # distinct PTX atomic/reduction opcodes (their semantics)

    def problems(self, family: str) -> list[str]:
        """Why this kernel is not acceptable on ``family`` (empty: it is)."""
        out = []
        limit = SMEM_PER_BLOCK[family]
        if self.shared_bytes > limit:
            out.append(f"shared memory {self.shared_bytes} B > {limit} B per block on {family}")
        if self.spill_bytes:
            out.append(f"{self.spill_bytes} B of register spills")
        return out


def compile_offline_reasons() -> list[str]:
    """Why kernels cannot be compiled offline here (empty: they can)."""
    if INTERPRETED:
        return ["TRITON_INTERPRET=1 is set: kernels are interpreted, not compiled"]
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401
    except ImportError as e:
        return [f"this Triton has no NVIDIA backend ({e})"]
    return []


def _ptxas_usage(ptx: str, cap: int) -> tuple[int | None, int | None, tuple[str, ...]]:
    """(registers, spill bytes, warnings) from ``ptxas -v`` on ``ptx``; Nones without ptxas."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    try:
        path = get_ptxas(cap).path
    except Exception:  # no ptxas bundled or found
        return None, None, ()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [path, "-v", f"--gpu-name={sm_arch_from_capability(cap)}", src, "-o", src + ".o"]
        err = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stderr
    regs = re.search(r"Used (\d+) registers", err)
    stores = re.search(r"(\d+) bytes spill stores", err)
    loads = re.search(r"(\d+) bytes spill loads", err)
    spill = int(stores.group(1)) + int(loads.group(1)) if stores and loads else None
    warns = tuple(sorted(set(re.findall(r"warning\s*:\s*(.+)", err))))
    return (int(regs.group(1)) if regs else None), spill, warns


def ptxas_report(ptx: str, cap: int) -> str:
    """``"<regs> regs, <bytes> B spilled[, warnings]"`` for one PTX text (benchmarks'
    compile reports); says so when ptxas cannot run here."""
    try:
        regs, spill, warns = _ptxas_usage(ptx, cap)
    except Exception as e:  # no NVIDIA backend in this Triton
        return f"ptxas unavailable ({type(e).__name__})"
    if regs is None:
        return "ptxas unavailable"
    out = f"{regs} regs, {spill if spill is not None else '?'} B spilled"
    return out + "".join(f", {w}" for w in warns)


def jit_function(fn):
    """The ``@triton.jit`` function under autotune/heuristics wrappers."""
    while not hasattr(fn, "arg_names") or not hasattr(fn, "src"):
        fn = fn.fn
    return fn


def kernel_arg_names(fn) -> list[str]:
    """The argument names of a kernel, in order: what :func:`compile_kernel` needs a type
    or a value for."""
    return list(jit_function(fn).arg_names)


def compile_kernel(
    fn,
    signature: dict[str, str],
    constexprs: dict[str, object],
    cap: int,
    num_warps: int,
    num_stages: int,
    divisible: tuple[str, ...] = (),
):
    """Compile ``fn`` (a ``@triton.jit`` kernel; autotune/heuristics wrappers are
    unwrapped) for compute capability ``cap`` without a GPU; returns Triton's compiled
    kernel (``.asm["ptx"]``, ``.metadata``).

    ``signature`` maps each runtime argument to a Triton type ("*bf16", "i32", "fp32");
    ``constexprs`` holds constexpr values (also runtime arguments specialised to a
    constant, e.g. a unit stride); ``divisible`` names arguments that a launch would
    specialise as multiples of 16 (pointers from torch, most strides), so the code is what
    a real launch compiles.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_function(fn)
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        else:
            sig[name] = signature[name]
            if name in divisible:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(
        ASTSource(fn, sig, dict(constexprs), attrs),
        target=GPUTarget("cuda", cap, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )


def usage_of(kernel, cap: int) -> Usage:
    """Resource use of a kernel from :func:`compile_kernel` (``ptxas -v`` on its PTX)."""
    ptx = kernel.asm["ptx"]
    regs, spill, warns = _ptxas_usage(ptx, cap)
    scratch = int(getattr(kernel.metadata, "global_scratch_size", 0) or 0)
    atomics = tuple(sorted(set(re.findall(r"\b(?:atom|red)\.[\w.]+", ptx))))
    return Usage(kernel.metadata.shared, regs, spill, warns, scratch, atomics)


def compile_offline(fn, signature, constexprs, cap, num_warps, num_stages, divisible=()) -> Usage:
    """:func:`compile_kernel` and :func:`usage_of` in one call."""
    k = compile_kernel(fn, signature, constexprs, cap, num_warps, num_stages, divisible)
    return usage_of(k, cap)
