"""A plain (non-editable) install provides all three import packages: a static check of
the source tree (default suite) and a real ``pip install --target`` (``slow``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_source_folder_is_a_package_setup_py_installs():
    """setup.py installs what ``find_packages`` finds: folders with an ``__init__.py``. A
    folder of modules without one would be left out of a plain install (an editable
    install or a stale build/ hides that)."""
    roots = {"rsfm_core": REPO / "rsfm_core", "rsfm_kernels": REPO / "kernels",
             "rsfm_train": REPO / "train"}  # fmt: skip
    missing = []
    for root in roots.values():
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            if folder.name in ("__pycache__", "configs") or folder.name.startswith("."):
                continue
            if any(folder.glob("*.py")) and not (folder / "__init__.py").is_file():
                missing.append(str(folder.relative_to(REPO)))
    assert not missing, f"folders with modules but no __init__.py: {missing}"
    setup = (REPO / "setup.py").read_text()
    assert '"configs/*.yaml"' in setup and any((REPO / "train" / "configs").glob("*.yaml"))
    # shipped checkpoints (docs/models.md) are package data of rsfm_core
    assert '"model/weights/*/model.safetensors"' in setup
    assert any((REPO / "rsfm_core" / "model" / "weights").glob("*/model.safetensors"))
    for name, folder in roots.items():
        assert f'"{name}": "{folder.name}"' in setup, name


def _source_copy(dest: Path) -> Path:
    """The checkout's sources without build products (a stale ``build/`` in the checkout
    once hid a missing module from this test)."""
    skip = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".torch_extensions",
        "runs", "demo_out", ".pytest_cache", ".ruff_cache",
    )  # fmt: skip
    shutil.copytree(REPO, dest, ignore=skip)
    return dest


@pytest.mark.slow
def test_plain_install_imports_all_three_packages(tmp_path):
    target = tmp_path / "site"
    src = _source_copy(tmp_path / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    for sub in ("rsfm_kernels/attn/dense.py", "rsfm_core/io/read.py", "rsfm_core/inference/run.py",
                "rsfm_core/synthetic/scene.py", "rsfm_train/data/loader.py"):  # fmt: skip
        assert (target / sub).is_file(), sub  # every subpackage is installed
    assert (target / "rsfm_train" / "configs" / "tiny_cpu.yaml").is_file()
    shipped = target / "rsfm_core" / "model" / "weights" / "rsfm_tiny_real"
    assert (shipped / "config.json").is_file() and (shipped / "model.safetensors").is_file()
    assert not (target / "kernels").exists() and not (target / "train").exists()
    code = (
        "import rsfm_core, rsfm_kernels, rsfm_train, rsfm_core.model, rsfm_core.inference.run,"
        " rsfm_kernels.attn, rsfm_train.data.loader;"
        "print(rsfm_core.__file__); print(rsfm_kernels.__file__); print(rsfm_train.__file__)"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
        cwd=tmp_path, check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    for line in out.stdout.split():
        assert line.startswith(str(target)), line
