"""Every ```python block of README.md and docs/*.md runs as written (in a fresh folder,
one subprocess each), unless an HTML comment on the line above says why not:

    <!-- docs-test: skip (REASON) -->          an outline with placeholders
    <!-- docs-test: needs sen1floods11 -->     shared real data sets (skip when absent)
    <!-- docs-test: slow -->                   runs only with -m slow

Shell blocks are not run (they train, download, take minutes): every `rsfm ...` command
in them is parsed by the real `rsfm` parser instead, so a renamed or removed flag or
subcommand in the docs fails here; what the commands do is tested in tests/core and
tests/train."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import real_data_root

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(
    r"(?:^<!-- docs-test: (?P<marker>.*?) -->\n)?^```python\n(?P<code>.*?)^```", re.M | re.S
)


def blocks() -> list:
    out = []
    for f in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = f.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text[: m.start("code")].count("\n")
            marker = (m.group("marker") or "").strip()
            marks = [pytest.mark.slow] if marker == "slow" else []
            name = f"{f.relative_to(REPO)}:{line}"
            out.append(pytest.param(m.group("code"), marker, id=name, marks=marks))
    return out


BLOCKS = blocks()


def test_blocks_are_found_and_skips_give_a_reason():
    fences = sum(
        f.read_text(encoding="utf-8").count("\n```python\n")
        for f in [REPO / "README.md", *(REPO / "docs").glob("*.md")]
    )
    assert len(BLOCKS) == fences > 0  # the pattern misses none
    for p in BLOCKS:
        marker = p.values[1]
        if marker.startswith("skip"):
            assert re.fullmatch(r"skip \(.{10,}\)", marker), f"{p.id}: say why: {marker!r}"
        else:
            assert marker in ("", "slow") or marker.startswith("needs "), f"{p.id}: {marker!r}"


@pytest.mark.parametrize("code, marker", BLOCKS)
def test_block_runs(code, marker, tmp_path):
    if marker.startswith("skip"):
        pytest.skip(marker)
    root = real_data_root().resolve()
    if marker.startswith("needs "):
        for name in marker[len("needs ") :].split(","):
            if not (root / name.strip()).is_dir():
                pytest.skip(f"real data set {name.strip()!r} not found at {root}")
    (tmp_path / "block.py").write_text(code, encoding="utf-8")
    env = {**os.environ, "RSFM_REAL_DATA": str(root), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "block.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, f"the block failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"


SHELL = re.compile(r"^```(?:bash|sh)\n(.*?)^```", re.M | re.S)
RSFM = re.compile(r"(?:^|&&|;|\s)rsfm\s+(.*?)(?=\s+&&|\s*;|$)")


def rsfm_commands() -> list:
    out = []
    for f in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = f.read_text(encoding="utf-8")
        for m in SHELL.finditer(text):
            line0 = text[: m.start(1)].count("\n") + 1
            code = m.group(1).replace("\\\n", " ")
            for i, line in enumerate(code.splitlines()):
                line = line.split(" #")[0].strip()
                for c in RSFM.finditer(line):
                    out.append(pytest.param(c.group(1), id=f"{f.relative_to(REPO)}:{line0 + i}"))
    return out


@pytest.mark.parametrize("args", rsfm_commands())
def test_shell_block_rsfm_command_parses(args, capsys):
    from rsfm_core import cli

    try:
        cli.build_parser().parse_args(shlex.split(args))
    except SystemExit:
        pytest.fail(f"rsfm {args}: {capsys.readouterr().err.strip()}")
