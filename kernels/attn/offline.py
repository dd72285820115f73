"""Offline compile of the attention launch configs for each GPU family: no GPU needed.

    python -m rsfm_kernels.attn.offline [--family sm90 ...] [--d 128 ...] [--json out.json]

Compiles every entry of :mod:`rsfm_kernels.attn.configs` (dense kernels: the pinned
config and the autotuning alternatives, bf16 and float32; packed short kernels: L in
{4, 16, 33, 64}) for the family's compute capability with Triton's own compiler and
ptxas, and reports shared memory, registers and spills (``ptxas -v``). Exit status 1
when any entry spills or needs more shared memory than the family allows. Needs
``TRITON_INTERPRET`` unset (the kernels must be compiled, not interpreted).

Specialisation follows a real launch of contiguous-in-D tensors: unit strides along D
and along the mask are constants, pointers and the other strides are multiples of 16;
lengths are ragged (no ``EVEN_M``/``EVEN_N``), which compiles the masked last block too.
Worst cases: the forward and the deterministic dQ with a key-padding mask; the dK/dV
kernel without one (it then holds two copies of its loop: the full key blocks and the
ragged one) and with the atomic dQ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

import torch

from .._triton_common import (
    FAMILY_CAPABILITY,
    Usage,
    compile_kernel,
    compile_offline,
    compile_offline_reasons,
    jit_function,
    usage_of,
)
from . import configs as CF
from . import dense as _D
from . import short as _S

_TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_UNIT = {"smn"}  # mask stride along N: 1 for a (B, N) bool mask


def _signature(fn, dtype: str, dq_dtype: str) -> tuple[dict, dict, tuple]:
    """(signature, unit-stride constexprs, divisible names) for one kernel's arguments."""
    fn0 = jit_function(fn)
    sig, const, div = {}, {}, []
    for name in fn0.arg_names:
        if name in ("Q", "K", "V", "Out", "DO", "DK", "DV"):
            sig[name] = f"*{dtype}"
            div.append(name)
        elif name == "DQ":
            sig[name] = f"*{dq_dtype}"
            div.append(name)
        elif name in ("LSE", "DELTA"):
            sig[name] = "*fp32"
            div.append(name)
        elif name == "MASK":
            sig[name] = "*u8"
        elif name in _UNIT or (name.startswith("s") and name.endswith("d") and len(name) <= 5):
            const[name] = 1
        elif name.startswith("s") and len(name) <= 5 and name != "smb":
            sig[name] = "i32"
            div.append(name)
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig, const, tuple(div)


def compile_dense(family: str, d: int, dtype: str, kernel: str, cfg: CF.LaunchConfig) -> Usage:
    """Compile one dense kernel config for ``family`` (head dim ``d``, a power of two)."""
    return usage_of(build_dense(family, d, dtype, kernel, cfg), FAMILY_CAPABILITY[family])


def build_dense(family: str, d: int, dtype: str, kernel: str, cfg: CF.LaunchConfig):
    """The compiled kernel (``.asm["ptx"]``, ``.metadata``) behind :func:`compile_dense`."""
    fn = _D.KERNELS[kernel]
    dq_dtype = "fp32" if kernel == "kv" else dtype
    sig, const, div = _signature(fn, dtype, dq_dtype)
    const.update(
        HEAD_DIM=d, BLOCK_D=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, TMA=cfg.tma,
        TMA_OK=cfg.tma, EVEN_M=False, EVEN_N=False, EVEN_D=True,
        HAS_MASK=kernel != "kv",
    )  # fmt: skip
    if kernel == "fwd":
        const["PERSISTENT"] = cfg.persistent
    if kernel == "kv":
        const["ATOMIC_DQ"] = True
    cap = FAMILY_CAPABILITY[family]
    return compile_kernel(fn, sig, const, cap, cfg.num_warps, cfg.num_stages, div)


def compile_short(family: str, d: int, length: int, kernel: str) -> tuple[CF.ShortConfig, Usage]:
    """Compile the packed kernel (``kernel``: "fwd" or "bwd") for sequences of ``length``."""
    sc = CF.short_config(length, length, d, family)
    fn = _S._short_fwd_kernel if kernel == "fwd" else _S._short_bwd_kernel
    sig, const, div = _signature(fn, "bf16", "bf16")
    const.update(HEAD_DIM=d, BLOCK_D=d, HAS_MASK=True, SEQS=sc.seqs, BLOCK_M=sc.block_m,
                 BLOCK_N=sc.block_n)  # fmt: skip
    warps = sc.warps_fwd if kernel == "fwd" else sc.warps_bwd
    return sc, compile_offline(fn, sig, const, FAMILY_CAPABILITY[family], warps, 1, div)


SHORT_LENGTHS = (4, 16, 33, 64)


def representative() -> list[tuple[str, int, str, str, CF.LaunchConfig]]:
    """A few entries that stand for the tables (the default CI subset): the hot kernels
    at D = 128 on the 227 KB Hopper family and the 99 KB consumer-Blackwell family, the
    sm100 forward through tensor descriptors with the persistent grid, sm80's dQ."""
    out = []
    for fam in ("sm90", "sm120"):
        fwd, kv, _ = CF.pinned(fam, 128, torch.bfloat16)
        out += [(fam, 128, "bf16", "fwd", fwd), (fam, 128, "bf16", "kv", kv)]
    tma = [c for c in CF.space("sm100", 128, torch.bfloat16, "fwd") if c.tma and c.persistent]
    out += [("sm100", 128, "bf16", "fwd", c) for c in tma[:1]]
    out.append(("sm80", 64, "bf16", "dq", CF.pinned("sm80", 64, torch.bfloat16)[2]))
    return out


def dense_entries(families, d_classes) -> list[tuple[str, int, str, str, CF.LaunchConfig]]:
    return [e for e in CF.entries() if e[0] in families and e[1] in d_classes]


def run(families, d_classes, short=True, dense=True, todo=None, log=sys.stderr) -> list[dict]:
    """Compile the selected entries (or ``todo``, a list like :func:`representative`'s);
    one row per kernel config with its usage and problems."""
    rows = []
    if todo is None:
        todo = dense_entries(families, d_classes) if dense else []
    for fam, d, dt, kern, cfg in todo:
        t0 = time.time()
        u = compile_dense(fam, d, dt, kern, cfg)
        rows.append(_row(fam, d, dt, kern, str(cfg), u, time.time() - t0))
        print(_line(rows[-1]), file=log, flush=True)
    for fam in families if short else ():
        for d in d_classes:
            for length in SHORT_LENGTHS:
                for kern in ("fwd", "bwd"):
                    t0 = time.time()
                    sc, u = compile_short(fam, d, length, kern)
                    warps = sc.warps_fwd if kern == "fwd" else sc.warps_bwd
                    desc = f"L={length}: {sc.seqs} seqs {sc.block_m}x{sc.block_n} w{warps}"
                    rows.append(_row(fam, d, "bf16", f"short {kern}", desc, u, time.time() - t0))
                    print(_line(rows[-1]), file=log, flush=True)
    return rows


def _row(fam, d, dt, kern, cfg, u: Usage, secs: float) -> dict:
    return {"family": fam, "D": d, "dtype": dt, "kernel": kern, "config": cfg, **asdict(u),
            "problems": u.problems(fam), "compile_s": round(secs, 1)}  # fmt: skip


def _line(r: dict) -> str:
    regs = "?" if r["registers"] is None else r["registers"]
    spill = "?" if r["spill_bytes"] is None else r["spill_bytes"]
    warn = " [" + "; ".join(r["warnings"]) + "]" if r["warnings"] else ""
    bad = "  PROBLEM: " + "; ".join(r["problems"]) if r["problems"] else ""
    return (f"{r['family']:<6} D={r['D']:<4} {r['dtype']:<5} {r['kernel']:<10} {r['config']:<34} "
            f"smem {r['shared_bytes'] / 1024:6.1f} KB  regs {regs:>3}  spill {spill} B{warn}{bad}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", action="append", choices=CF.FAMILIES, help="repeatable; default all")
    p.add_argument("--d", type=int, action="append", choices=(32, 64, 128), help="head-dim class")
    p.add_argument("--no-short", action="store_true", help="skip the packed short kernels")
    p.add_argument("--no-dense", action="store_true", help="skip the dense kernels")
    p.add_argument("--representative", action="store_true", help="only the CI subset")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    reasons = compile_offline_reasons()
    if reasons:
        print("cannot compile offline: " + "; ".join(reasons), file=sys.stderr)
        return 2
    todo = representative() if args.representative else None
    rows = run(tuple(args.family or CF.FAMILIES), tuple(args.d or (32, 64, 128)),
               short=not (args.no_short or args.representative), dense=not args.no_dense,
               todo=todo, log=sys.stdout)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": __import__("triton").__version__, "rows": rows}, f, indent=1)
    bad = [r for r in rows if (r["problems"] and r["dtype"] != "fp32") or r["spill_bytes"] is None]
    fp32 = [r for r in rows if r["problems"] and r["dtype"] == "fp32"]
    print(f"{len(rows)} kernels compiled; {len(bad)} with problems or without ptxas numbers; "
          f"{len(fp32)} float32 entries with problems (float32 is forced-only on CUDA)")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
