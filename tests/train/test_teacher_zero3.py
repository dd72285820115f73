"""The ZeRO-3 EMA teacher on one process: the student and teacher are built partitioned
(``deepspeed.zero.Init``) with the same weights as a plain build, the EMA step reads only
this rank's partitions (no collective), and the full teacher state round-trips through
:func:`teacher_state_dict` / :func:`load_teacher_state`. Two ranks (the partitions
differing per rank, exact resume, ZeRO-3 trains like ZeRO-0): test_engine_dist.py."""

from __future__ import annotations

import pytest
import torch

from .engine_common import (  # noqa: F401 (restore_determinism: an autouse fixture)
    assert_states_equal,
    full_state,
    micro_config,
    restore_determinism,
)


@pytest.fixture(scope="module")
def z3(tmp_path_factory):
    """A ZeRO-3 micro trainer that has taken no step yet."""
    from rsfm_train.engine import Trainer

    tr = Trainer(micro_config(tmp_path_factory.mktemp("teacher_z3") / "run", 3), progress=False)
    yield tr
    tr.close()
    torch.use_deterministic_algorithms(False)


def test_zero3_student_and_teacher_are_partitioned_with_the_plain_build_weights(z3):
    from rsfm_train.engine import build_student, seed_everything

    assert all(hasattr(p, "ds_id") for p in z3.student.parameters())
    assert all(hasattr(p, "ds_id") for p in z3.teacher.module.parameters())
    assert all(p.ds_tensor.dtype == torch.float32 for p in z3.teacher.module.parameters())
    # zero.Init left no process-wide patch behind (mem_efficient_linear=False)
    assert torch.nn.functional.linear is torch._C._nn.linear
    seed_everything(z3.cfg.run.seed, z3.cfg.run.deterministic)
    plain = {k: v.detach().clone() for k, v in build_student(z3.cfg).state_dict().items()}
    # the encoder initialises its children's weights after building them: without the
    # gathering nn.init wrappers these would keep PyTorch's defaults under zero.Init
    assert_states_equal(full_state(z3.student), plain)
    assert_states_equal(full_state(z3.teacher.module), plain)


def test_zero3_ema_update_is_local_and_the_momentum_average(z3, monkeypatch):
    import deepspeed.comm as ds_comm
    import torch.distributed as torch_dist
    from rsfm_train.teacher import teacher_state_dict

    student = full_state(z3.student)
    with torch.no_grad():  # move the student off the teacher so the average shows
        for p in z3.student.parameters():
            p.ds_tensor.mul_(0.5).add_(0.25)
    moved = full_state(z3.student)
    teacher = teacher_state_dict(z3.teacher.module)
    assert_states_equal(teacher, student)

    def no_collective(*args, **kwargs):
        raise AssertionError("the ZeRO-3 EMA step must not communicate")

    with monkeypatch.context() as m:
        for mod in (torch_dist, ds_comm):
            for name in ("all_gather", "all_gather_into_tensor", "broadcast", "all_reduce",
                         "allgather_fn", "reduce_scatter_tensor"):  # fmt: skip
                if hasattr(mod, name):
                    m.setattr(mod, name, no_collective)
        z3.teacher.update(z3.student, 0.9)
    after = teacher_state_dict(z3.teacher.module)
    params = dict(z3.student.named_parameters())
    for k, v in after.items():
        want = torch.lerp(teacher[k], moved[k], 0.1) if k in params else moved[k]
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6)


def test_zero3_teacher_state_round_trips_and_checks_shapes(z3):
    from rsfm_train.teacher import load_teacher_state, teacher_state_dict

    sd = teacher_state_dict(z3.teacher.module)
    load_teacher_state(z3.teacher.module, {k: v + 1 for k, v in sd.items()})
    assert_states_equal(teacher_state_dict(z3.teacher.module), {k: v + 1 for k, v in sd.items()})
    name = next(n for n, _ in z3.teacher.module.named_parameters())
    bad = {**sd, name: torch.zeros(3)}
    with pytest.raises(ValueError, match="shape"):
        load_teacher_state(z3.teacher.module, bad)
    with pytest.raises(ValueError, match="names differ"):
        load_teacher_state(z3.teacher.module, {k: v for k, v in sd.items() if k != name})
    load_teacher_state(z3.teacher.module, sd)
    assert_states_equal(teacher_state_dict(z3.teacher.module), sd)
