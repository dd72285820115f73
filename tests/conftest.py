"""Test-wide setup.

- On a machine without CUDA, Triton kernels run under the CPU interpreter: it must be
  switched on before any kernel module is imported, hence here, at the very top.
- pytest-timeout is optional (the GPU image lacks it): its ini option and marker are
  declared here and in pytest.ini so that collection works either way.
- ``real_data`` points at ../shared/data (or $RSFM_REAL_DATA); tests that need a data set
  call ``real_data_dir("eurosat_ms")`` and are skipped with a reason when it is absent.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    # pytest.ini sets pytest-timeout's `timeout`; without the plugin (the bare GPU image)
    # declare it so that pytest does not warn about an unknown option.
    if importlib.util.find_spec("pytest_timeout") is None:
        parser.addini("timeout", "per-test time limit (used by pytest-timeout when installed)")


def real_data_root() -> Path:
    return Path(os.environ.get("RSFM_REAL_DATA", REPO.parent / "shared" / "data"))


def real_data_dir(name: str) -> Path:
    """The folder of one real data set, or skip the calling test with a reason."""
    d = real_data_root() / name
    if not d.is_dir():
        pytest.skip(f"real data set {name!r} not found at {d} (set RSFM_REAL_DATA to its parent)")
    return d


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def real_data():
    """``real_data("eurosat_ms")`` -> Path, or skip the test when the set is absent."""
    return real_data_dir
