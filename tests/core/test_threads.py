"""Intra-op threads of the computing commands (rsfm_core.cliutil.choose_threads /
setup_threads): cores available minus busy cores and data workers, overridable, logged."""

from __future__ import annotations

import logging
import os

import pytest

from rsfm_core import cliutil


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(cliutil, "available_cores", lambda: (4, "affinity"))


def test_cores_minus_busy_cores_and_workers(four_cores):
    assert cliutil.choose_threads(0, {}, load=0)[0] == 4
    assert cliutil.choose_threads(1, {}, load=0)[0] == 3
    n, why = cliutil.choose_threads(2, {}, load=1)
    assert n == 1 and "1 busy" in why and "2 data workers" in why
    assert cliutil.choose_threads(8, {}, load=3)[0] == 1  # never fewer than one
    n, why = cliutil.choose_threads(0, {"LOCAL_WORLD_SIZE": "2"}, load=0)
    assert n == 2 and "/ 2 processes" in why


def test_environment_overrides(four_cores):
    assert cliutil.choose_threads(2, {"RSFM_THREADS": "3"}, load=0) == (3, "RSFM_THREADS=3")
    assert cliutil.choose_threads(0, {"OMP_NUM_THREADS": "1"}, load=0)[0] == 1
    env = {"RSFM_THREADS": "2", "OMP_NUM_THREADS": "1"}
    assert cliutil.choose_threads(0, env, load=0)[0] == 2  # ours wins
    for bad in ("two", "0"):
        with pytest.raises(ValueError, match="RSFM_THREADS"):
            cliutil.choose_threads(0, {"RSFM_THREADS": bad})


def test_busy_cores_from_the_load_average_only_for_the_whole_machine(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert cliutil._busy_cores(4) == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert cliutil._busy_cores(4) == 3  # at most all but one
    assert cliutil._busy_cores(2) == 0  # an affinity mask / quota: the host's load is not ours


def test_cgroup_quota_caps_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(cliutil, "_cgroup_quota", lambda: 2.5)
    assert cliutil.available_cores() == (2, "cgroup quota 2.5")
    monkeypatch.setattr(cliutil, "_cgroup_quota", lambda: None)
    assert cliutil.available_cores() == (8, "affinity")


def test_setup_threads_sets_torch_and_logs(monkeypatch, caplog):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("RSFM_THREADS", "1")
    try:
        with caplog.at_level(logging.INFO, logger="rsfm_core"):
            assert cliutil.setup_threads(workers=0) == 1
        assert torch.get_num_threads() == 1
        assert "threads: 1 intra-op (RSFM_THREADS=1" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_rsfm_sets_a_passive_openmp_wait_policy_unless_the_user_did(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cliutil.passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cliutil.passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
