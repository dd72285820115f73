"""``cliutil.keep_freed_memory`` (what ``rsfm embed`` sets on CPU): glibc reuses freed
buffers instead of page-faulting fresh ones for every large allocation."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

_PROBE = """
import json, resource
import torch
from rsfm_core.cliutil import keep_freed_memory
why = keep_freed_memory()
torch.set_num_threads(1)
x, w = torch.randn(4, 4096, 128), torch.randn(512, 128)
def step():  # an MLP block of 4 x 4096 tokens: the hidden activation is 33.5 MB
    return (torch.nn.functional.gelu(x @ w.T) @ w).sum()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"why": why, "faults": faults}))
"""


def _probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "RSFM_MALLOC"))}
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_large_buffers_are_reused_without_page_faults():
    kept = _probe()
    assert kept["why"].startswith("freed memory kept for reuse")
    system = _probe(RSFM_MALLOC="system")
    assert system["why"] == "glibc defaults (RSFM_MALLOC=system)"
    pages = 10 * 2 * 32 * 2**20 // 4096  # ten steps of two fresh >= 32 MB buffers
    assert system["faults"] > pages // 2, system  # the default: fresh pages every step
    assert kept["faults"] < system["faults"] // 5, (kept, system)  # reused after warm-up


def test_glibc_settings_in_the_environment_are_left_in_charge():
    out = _probe(MALLOC_ARENA_MAX="2", MALLOC_MMAP_THRESHOLD_="131072")
    assert out["why"] == "glibc settings from the environment (MALLOC_MMAP_THRESHOLD_)"
