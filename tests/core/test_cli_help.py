"""`rsfm --help` and every subcommand's --help import neither torch nor numpy (nor
DeepSpeed, rasterio): parsers live in modules that import their stack in the handler.
Measured in docs/architecture.md; checked here by what is imported, not by time."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "numpy", "deepspeed", "rasterio", "triton")

CHECK = """
import contextlib, io, sys
from rsfm_core import cli
for argv in ([], *[[c] for c in sys.argv[1:]]):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
        cli.main([*argv, "--help"])
    assert "usage: rsfm" in out.getvalue(), argv
print(" ".join(m for m in {heavy!r} if m in sys.modules) or "none")
"""


def test_help_of_every_command_imports_no_heavy_package():
    from rsfm_core import cli

    sub = next(a for a in cli.build_parser()._actions if a.dest == "cmd")
    code = CHECK.format(heavy=HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", code, *sub.choices], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "none", f"`rsfm ... --help` imported: {out.stdout.strip()}"
