"""Contrastive losses on synthetic features: alignment, masks, gradients, Sinkhorn, skips."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from rsfm_train.config import LossSection
from rsfm_train.losses import (
    ContrastiveInputs,
    ContrastiveLoss,
    LossTerms,
    ProjectionHead,
    ProjectionHeads,
    cross_modal_loss,
    gather_tokens,
    global_info_nce,
    image_loss,
    object_loss,
    pixel_loss,
    sinkhorn_knopp,
)

B, D, H, W, P = 4, 16, 6, 6, 20


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pixel_case(seed: int = 0, noise: float = 0.05):
    """Student (view 1) and teacher (view 2) maps whose tokens agree at P paired positions."""
    g = _gen(seed)
    student = torch.randn(B, D, H, W, generator=g)
    teacher = torch.randn(B, D, H, W, generator=g)
    s_idx = torch.stack([torch.randperm(H * W, generator=g)[:P] for _ in range(B)])  # (B, P)
    t_idx = torch.stack([torch.randperm(H * W, generator=g)[:P] for _ in range(B)])
    s_tok = gather_tokens(student, s_idx)  # (B, P, D)
    flat = teacher.reshape(B, D, H * W)
    for b in range(B):
        flat[b, :, t_idx[b]] = (s_tok[b] + noise * torch.randn(P, D, generator=g)).T
    valid = torch.rand(B, P, generator=g) > 0.25
    return student, teacher, s_idx, t_idx, valid


def test_gather_tokens_picks_positions():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    idx = torch.tensor([[3, 0], [1, -1]])
    out = gather_tokens(x, idx)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out[0, 0], x[0, :, 1, 1])
    torch.testing.assert_close(out[1, 0], x[1, :, 0, 1])


def _info_nce_by_hand(q, k, valid, t):
    """InfoNCE written out row by row in float64: each valid row i against the valid keys,
    its positive is key i; the mean over valid rows."""
    rows = []
    keys = [j for j in range(k.shape[0]) if valid[j]]
    for i in range(q.shape[0]):
        if not valid[i]:
            continue
        logits = torch.stack([(q[i].double() @ k[j].double()) / t for j in keys])
        rows.append(torch.logsumexp(logits, 0) - (q[i].double() @ k[i].double()) / t)
    return torch.stack(rows).mean()


def test_global_info_nce_single_process_matches_the_formula_and_its_gradient():
    g = _gen(5)
    q = F.normalize(torch.randn(37, 8, generator=g), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(37, 8, generator=g), dim=1).requires_grad_(True)
    valid = torch.rand(37, generator=g) > 0.3
    loss, n = global_info_nce(q, k, valid, 0.1)
    want = _info_nce_by_hand(q, k, valid, 0.1)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    assert int(n) == int(valid.sum())
    gq, gk = torch.autograd.grad(loss, (q, k))
    wq, wk = torch.autograd.grad(want, (q, k))
    torch.testing.assert_close(gq, wq, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gk, wk, rtol=1e-4, atol=1e-6)
    assert (gq[~valid] == 0).all()  # invalid rows neither pull nor are pulled
    assert (gk[~valid] == 0).all()


# ------------------------------------------------------------------------------ pixel


def test_pixel_aligned_below_shuffled_and_finite():
    student, teacher, s_idx, t_idx, valid = _pixel_case()
    aligned = pixel_loss(student, teacher, s_idx, t_idx, valid)
    shuffled = pixel_loss(student, teacher, s_idx, t_idx[:, torch.randperm(P)], valid)
    assert torch.isfinite(aligned) and torch.isfinite(shuffled)
    assert aligned < 0.5 * shuffled
    assert shuffled > 0.5 * math.log(int(valid.sum()))  # near chance level


def test_pixel_ignores_invalid_pairs():
    student, teacher, s_idx, t_idx, valid = _pixel_case()
    base = pixel_loss(student, teacher, s_idx, t_idx, valid)
    s2, t2 = student.clone(), teacher.clone()
    for b in range(B):  # scramble the tokens of invalid pairs only (positions are unique)
        s2.reshape(B, D, -1)[b, :, s_idx[b][~valid[b]]] = 7.0
        t2.reshape(B, D, -1)[b, :, t_idx[b][~valid[b]]] = -3.0
    torch.testing.assert_close(pixel_loss(s2, t2, s_idx, t_idx, valid), base)


def test_pixel_gradient_reaches_student_only():
    student, teacher, s_idx, t_idx, valid = _pixel_case()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    pixel_loss(student, teacher, s_idx, t_idx, valid).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


# --------------------------------------------------------------------------- sinkhorn


def test_sinkhorn_is_near_doubly_stochastic():
    g = _gen(1)
    scores = F.normalize(torch.randn(3, 50, 8, generator=g), dim=-1)
    valid = torch.rand(3, 50, generator=g) > 0.2
    codes = sinkhorn_knopp(scores, valid, n_iters=50, epsilon=0.05)
    rows = codes.sum(-1)
    torch.testing.assert_close(rows[valid], torch.ones(int(valid.sum())))
    assert (codes[~valid] == 0).all()
    cols = codes.sum(1)  # (B, K)
    want = (valid.sum(1).float() / 8)[:, None].expand_as(cols)
    torch.testing.assert_close(cols, want, rtol=1e-3, atol=1e-3)
    # The default 3 iterations (SwAV's) already balance better than a plain softmax.
    few = sinkhorn_knopp(scores, valid, n_iters=3).sum(1)
    plain = (torch.softmax(scores / 0.05, dim=-1) * valid[..., None]).sum(1)
    assert (few - want).abs().mean() < 0.7 * (plain - want).abs().mean()


def test_sinkhorn_handles_image_without_valid_tokens():
    codes = sinkhorn_knopp(torch.randn(2, 5, 3), torch.tensor([[False] * 5, [True] * 5]))
    assert torch.isfinite(codes).all() and (codes[0] == 0).all()


# ----------------------------------------------------------------------------- object


def _object_case(seed: int = 2, k: int = 4, noise: float = 0.05):
    g = _gen(seed)
    centers = F.normalize(torch.randn(B, k, D, generator=g), dim=-1)  # per-image objects
    assign = torch.randint(0, k, (B, P), generator=g)
    student = centers.gather(1, assign[..., None].expand(B, P, D))
    student = student + 0.1 * torch.randn(B, P, D, generator=g)
    teacher = student + noise * torch.randn(B, P, D, generator=g)
    valid = torch.rand(B, P, generator=g) > 0.2
    return student, teacher, assign, valid


def test_object_aligned_below_shuffled():
    student, teacher, assign, valid = _object_case()
    aligned = object_loss(student, teacher, assign, valid, 4)
    shuffled = object_loss(student, teacher[torch.tensor([1, 2, 3, 0])], assign, valid, 4)
    assert torch.isfinite(aligned) and aligned < 0.5 * shuffled


def test_object_excludes_empty_clusters():
    student, teacher, _, valid = _object_case()
    assign = torch.randint(0, 3, (B, P), generator=_gen(5))  # clusters 3..7 stay empty
    few = object_loss(student, teacher, assign, valid, 3)
    many = object_loss(student, teacher, assign, valid, 8)
    assert torch.isfinite(many)
    torch.testing.assert_close(many, few)


def test_object_respects_masks_and_detaches_teacher():
    student, teacher, assign, valid = _object_case()
    base = object_loss(student, teacher, assign, valid, 4)
    s2, t2 = student.clone(), teacher.clone()
    s2[~valid], t2[~valid] = 5.0, -5.0
    torch.testing.assert_close(object_loss(s2, t2, assign, valid, 4), base)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    object_loss(student, teacher, assign, valid, 4).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert (student.grad[~valid] == 0).all()


# ------------------------------------------------------------------------------ image


def test_image_aligned_below_shuffled_and_student_only_grad():
    g = _gen(3)
    student = torch.randn(16, D, generator=g, requires_grad=True)
    teacher = (student.detach() + 0.05 * torch.randn(16, D, generator=g)).requires_grad_(True)
    for symmetric in (False, True):
        aligned = image_loss(student, teacher, symmetric=symmetric)
        shuffled = image_loss(
            student, teacher[torch.randperm(16, generator=g)], symmetric=symmetric
        )
        assert torch.isfinite(aligned) and aligned < 0.5 * shuffled
    image_loss(student, teacher, symmetric=True).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_image_valid_mask():
    g = _gen(4)
    s, t = torch.randn(8, D, generator=g), torch.randn(8, D, generator=g)
    valid = torch.tensor([True] * 6 + [False] * 2)
    want = image_loss(s[:6], t[:6], symmetric=True)
    torch.testing.assert_close(image_loss(s, t, symmetric=True, valid=valid), want)


# ------------------------------------------------------------------------ cross-modal


def _modal_case(seed: int = 6):
    g = _gen(seed)
    s2 = torch.randn(B, D, H, W, generator=g, requires_grad=True)
    s1 = (s2.detach() + 0.05 * torch.randn(B, D, H, W, generator=g)).requires_grad_(True)
    valid = {
        "s2": torch.rand(B, H, W, generator=g) > 0.2,
        "s1": torch.rand(B, H, W, generator=g) > 0.2,
    }
    return {"s2": s2, "s1": s1}, valid


def test_cross_modal_aligned_below_shuffled_and_grads_both():
    feats, valid = _modal_case()
    out = cross_modal_loss(feats, valid)
    assert not out.skipped and out.n_pairs == 1 and torch.isfinite(out.loss)
    perm = torch.randperm(H * W)
    shuffled = {"s2": feats["s2"], "s1": feats["s1"].flatten(2)[:, :, perm].reshape(B, D, H, W)}
    assert out.loss < 0.5 * cross_modal_loss(shuffled, valid).loss
    out.loss.backward()
    assert feats["s1"].grad.abs().sum() > 0 and feats["s2"].grad.abs().sum() > 0


def test_cross_modal_respects_masks():
    feats, valid = _modal_case()
    base = cross_modal_loss(feats, valid).loss
    shared = valid["s2"] & valid["s1"]
    f2 = {k: v.detach().clone() for k, v in feats.items()}
    f2["s1"].permute(0, 2, 3, 1)[~shared] = 9.0  # (B, h, w, D) view
    torch.testing.assert_close(cross_modal_loss(f2, valid).loss, base)


def test_cross_modal_skips():
    feats, valid = _modal_case()
    one = cross_modal_loss({"s2": feats["s2"]}, valid)
    assert one.skipped and one.loss.item() == 0.0 and not one.loss.requires_grad
    # No shared valid location: decided on the device (no host read), the term is a zero
    # that still reaches the features (zero gradient), and no pair counts.
    none_shared = {"s2": valid["s2"], "s1": ~valid["s2"]}
    out = cross_modal_loss(feats, none_shared)
    assert not out.skipped and out.n_pairs == 0 and out.loss.item() == 0.0
    out.loss.backward()
    assert all(torch.equal(f.grad, torch.zeros_like(f)) for f in feats.values())
    # Modality names from the config: a missing one contributes no pair.
    only = cross_modal_loss({"s2": feats["s2"]}, valid, modalities=["s1", "s2"])
    assert only.n_pairs == 0 and only.loss.item() == 0.0


def test_cross_modal_three_modalities_average_pairs():
    feats, valid = _modal_case()
    feats["hs"] = feats["s2"].detach() + 0.1
    out = cross_modal_loss(feats, None)
    assert out.n_pairs == 3 and not out.skipped


# ---------------------------------------------------------------------- heads, module


def test_projection_heads_normalise():
    cfg = LossSection(head_hidden_dim=32, head_dim=8)
    heads = ProjectionHeads(D, cfg)
    x = torch.randn(B, D, H, W)
    y = heads.dense.dense(x)
    assert y.shape == (B, 8, H, W)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(B, H, W))
    assert isinstance(heads.pooled, ProjectionHead)
    torch.testing.assert_close(heads.pooled(torch.randn(3, D)).norm(dim=-1), torch.ones(3))


def _full_inputs() -> ContrastiveInputs:
    student, teacher, s_idx, t_idx, valid = _pixel_case()
    student.requires_grad_(True)
    feats, mvalid = _modal_case()
    g = _gen(9)
    sp = torch.randn(B, D, generator=g, requires_grad=True)
    return ContrastiveInputs(
        student_dense=student, teacher_dense=teacher, student_index=s_idx,
        teacher_index=t_idx, pair_valid=valid, student_pooled=sp,
        teacher_pooled=sp.detach() + 0.05 * torch.randn(B, D, generator=g),
        modal_features=feats, modal_valid=mvalid,
    )  # fmt: skip


def test_contrastive_loss_combines_named_terms():
    cfg = LossSection(
        n_prototypes=4,
        pixel_weight=1.0,
        object_weight=0.5,
        image_weight=2.0,
        cross_modal_weight=0.25,
    )
    crit = ContrastiveLoss(cfg, dim=D)
    x = _full_inputs()
    out = crit(x)
    assert isinstance(out, LossTerms) and out.skipped == ()
    terms = [out.pixel, out.object, out.image, out.cross_modal]
    assert all(t is not None and torch.isfinite(t) and not t.requires_grad for t in terms)
    want = out.pixel + 0.5 * out.object + 2.0 * out.image + 0.25 * out.cross_modal
    torch.testing.assert_close(out.total.detach(), want)
    out.total.backward()
    assert x.student_dense.grad.abs().sum() > 0 and x.teacher_dense.grad is None
    assert set(out.log_dict()) == {
        "loss",
        "loss_pixel",
        "loss_object",
        "loss_image",
        "loss_cross_modal",
    }


def test_contrastive_loss_switches_and_skip_flag():
    cfg = LossSection(pixel=False, object=False, image=False, cross_modal=True)
    x = _full_inputs()
    x.modal_features = {"s2": x.modal_features["s2"]}
    out = ContrastiveLoss(cfg, dim=D)(x)
    assert out.skipped == ("cross_modal",) and out.pixel is None and out.cross_modal is None
    assert out.total.item() == 0.0 and out.total.requires_grad  # still backward-able
    with pytest.raises(ValueError, match="student_pooled"):
        ContrastiveLoss(LossSection(pixel=False, object=False), dim=D)(ContrastiveInputs())


def test_prototypes_update_in_training_only_and_masked_tokens_ignored():
    cfg = LossSection(pixel=False, image=False, cross_modal=False, n_prototypes=4)
    crit = ContrastiveLoss(cfg, dim=D)
    x = _full_inputs()
    before = crit.prototypes.weight.clone()
    crit.eval()
    base = crit(x).object
    assert torch.equal(crit.prototypes.weight, before)
    x2 = _full_inputs()
    for b in range(B):  # change only tokens of invalid pairs: Sinkhorn must not see them
        x2.teacher_dense.reshape(B, D, -1)[b, :, x2.teacher_index[b][~x2.pair_valid[b]]] = 4.0
    torch.testing.assert_close(crit(x2).object, base)
    crit.train()
    crit(x)
    assert not torch.equal(crit.prototypes.weight, before)
    torch.testing.assert_close(crit.prototypes.weight.norm(dim=1), torch.ones(4))
