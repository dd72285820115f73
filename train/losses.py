"""Multi-granularity contrastive losses (SkySense-style) on feature tensors.

No model dependency: the engine runs the student (encoder + :class:`ProjectionHeads`) on
view 1 and the EMA teacher on view 2, then calls :class:`ContrastiveLoss` with a
:class:`ContrastiveInputs`. Four terms, each switchable and weighted in ``LossSection``:

- pixel: student token vs teacher token at the same ground location (index tensors give
  the corresponding token of each view); every other token of the global batch is a
  negative.
- object: teacher tokens of each image are clustered by Sinkhorn-Knopp onto K EMA
  prototypes; student and teacher tokens are average-pooled per (image, cluster); InfoNCE
  between matching pools across the global batch (empty clusters excluded).
- image: pooled vectors, InfoNCE across the global batch (optionally symmetric).
- cross-modal: the student's pre-fusion features of two modalities at the same location;
  negatives are the other locations. Skipped (flagged) with fewer than two modalities or no
  shared valid location anywhere in the global batch.
- variance (off by default): VICReg's variance and covariance terms (Bardes et al. 2022)
  on the student's *embedding* (the encoder's dense output, before the heads, over this
  rank's valid tokens): a hinge pushing every dimension's std up to ``variance_target``
  plus the squared off-diagonal covariances. It counters dimensional collapse of what
  users embed with, which the InfoNCE terms (acting after the heads) do not see.
- reconstruction (off by default): every valid token of the student's embedding predicts,
  for each band of its view, the band's normalised patch mean and standard deviation
  (over the patch's pixels and the view's valid dates), through a bilinear map between
  the token and the band's descriptor (:class:`SpectralDecoder`), so it works for any
  band set. Mean squared error over valid (token, band) entries. It asks the embedding
  to keep the input's spectrum and texture (CROMA and Clay pair a reconstruction term
  with their contrastive ones; docs/training.md "Recipe").

Decisions:
- Every loss L2-normalises its inputs (idempotent for head outputs); ``info_nce`` itself
  does not normalise.
- Teacher inputs are detached here, whatever the caller passed: gradients reach the
  student only. Pixel/object/image contrast student queries against teacher keys;
  ``image_symmetric`` adds teacher queries against student keys (gathered with autograd).
- Distributed: OpenCLIP's local loss (see ``rsfm_train.dist``). Each rank returns
  ``world_size * local_sum / global_valid_count``; with the engine's gradient *mean* over
  ranks this is exactly the global-batch mean loss and its gradient.
- Prototypes are an EMA buffer (online k-means under Sinkhorn's equipartition), not
  learned by gradient: a hard assignment gives them none. They are part of this module's
  state dict, so the engine must checkpoint the loss module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import rsfm_kernels as rk
import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F

from . import dist
from .config import LossSection

log = logging.getLogger("rsfm_train")


# --------------------------------------------------------------------- global InfoNCE


def global_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local-loss InfoNCE: local row ``i`` of ``q`` against every rank's rows of ``k``.

    ``q, k (n, D)`` are this rank's rows, row ``i`` of ``q`` pairs with row ``i`` of ``k``;
    ``valid (n,)``. ``k`` is gathered with autograd (so a ``k`` that requires grad gets
    gradient from every rank's queries). Returns ``(loss, global_valid_count)`` with
    ``loss = world_size * sum_local / max(1, count)`` (see the module docstring).
    """
    sizes = dist.row_sizes(k.shape[0], k.device)  # no exchange (or read) under equal_rows
    k_all = dist.all_gather_with_grad(k, sizes)  # (N_global, D)
    kv_all = dist.all_gather_with_grad(valid, sizes)  # (N_global,)
    offset = sum(sizes[: dist.rank()])
    labels = torch.arange(offset, offset + q.shape[0], device=q.device)
    mean_local = rk.info_nce(q, k_all, temperature, labels, valid, kv_all, backend=backend)
    n_local = valid.sum().to(mean_local.dtype)
    n_global = dist.all_reduce_sum(n_local)
    loss = mean_local * n_local * dist.world_size() / n_global.clamp_min(1.0)
    return loss, n_global


def _pair_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
    symmetric: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    loss, n = global_info_nce(a, b, valid, temperature)
    if symmetric:
        loss = 0.5 * (loss + global_info_nce(b, a, valid, temperature)[0])
    return loss, n


# ------------------------------------------------------------------------- pixel level


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Tokens at flat positions ``index (B, P)`` of ``tokens (B, D, h, w)``: ``(B, P, D)``.

    Entries of ``index`` outside ``[0, h*w)`` (e.g. -1 for padding) must be masked by the
    caller; they are read at position 0.
    """
    b, d, h, w = tokens.shape
    idx = torch.where((index >= 0) & (index < h * w), index, torch.zeros_like(index))
    flat = tokens.reshape(b, d, h * w)  # (B, D, h*w)
    out = flat.gather(2, idx[:, None, :].expand(b, d, idx.shape[1]))  # (B, D, P)
    return out.transpose(1, 2)  # (B, P, D)


def pixel_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_index: torch.Tensor,
    teacher_index: torch.Tensor,
    valid: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Student tokens ``(B, D, h, w)`` vs teacher tokens ``(B, D, h', w')`` at the same
    ground locations (``*_index (B, P)`` flat token positions, ``valid (B, P)``)."""
    s = gather_tokens(student, student_index)  # (B, P, D)
    t = gather_tokens(teacher.detach(), teacher_index)  # (B, P, D)
    d = s.shape[-1]
    loss, _ = _pair_loss(
        s.reshape(-1, d), t.reshape(-1, d), valid.reshape(-1).bool(), temperature, False
    )
    return loss


# ------------------------------------------------------------------------ object level


@torch.no_grad()
def sinkhorn_knopp(
    scores: torch.Tensor,
    valid: torch.Tensor | None = None,
    n_iters: int = 3,
    epsilon: float = 0.05,
) -> torch.Tensor:
    """Balanced soft assignment of each image's tokens to K prototypes (log domain, fp32).

    ``scores (B, N, K)`` token-prototype similarities, ``valid (B, N)``. Returns codes
    ``(B, N, K)``: each valid token's row sums to 1, each prototype column sums to about
    ``n_valid / K`` (exactly after infinitely many iterations), invalid tokens are 0.
    """
    b, n, k = scores.shape
    if valid is None:
        valid = torch.ones(b, n, dtype=torch.bool, device=scores.device)
    valid = valid.bool()
    keep = valid[..., None]  # (B, N, 1)
    log_q = (scores.float() / epsilon).masked_fill(~keep, float("-inf"))  # (no scalar tensor)
    target = torch.log(valid.sum(1).clamp_min(1).float() / k)[:, None, None]  # (B, 1, 1)
    for _ in range(n_iters):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) + target  # columns
        log_q = log_q - torch.logsumexp(log_q, dim=2, keepdim=True)  # rows (tokens) sum 1
        log_q = log_q.masked_fill(~keep, float("-inf"))  # images with no valid token give NaN
    return log_q.exp()


class Prototypes(nn.Module):
    """K unit-norm prototypes ``(K, D)`` kept as an EMA of the cluster means (a buffer)."""

    def __init__(self, n: int, dim: int, momentum: float = 0.99, seed: int = 0):
        super().__init__()
        # A fixed seed, not the global RNG: every rank must start from the same prototypes.
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", F.normalize(torch.randn(n, dim, generator=g), dim=1))
        self.momentum = momentum

    def assign(
        self, tokens: torch.Tensor, valid: torch.Tensor, n_iters: int = 3, epsilon: float = 0.05
    ) -> torch.Tensor:
        """Hard cluster id per token ``(B, P)`` from Sinkhorn codes of ``tokens (B, P, D)``."""
        t = F.normalize(tokens.detach().float(), dim=-1)
        scores = t @ self.weight.float().T  # (B, P, K)
        return sinkhorn_knopp(scores, valid, n_iters, epsilon).argmax(dim=-1)

    @torch.no_grad()
    def update(self, tokens: torch.Tensor, assignment: torch.Tensor, valid: torch.Tensor) -> None:
        """EMA step towards the (all-reduced) mean of each cluster's tokens; empty ones stay."""
        k = self.weight.shape[0]
        onehot = F.one_hot(assignment, k).float() * valid[..., None].float()  # (B, P, K)
        t = F.normalize(tokens.detach().float(), dim=-1)
        sums = torch.einsum("bpk,bpd->kd", onehot, t)  # (K, D)
        counts = onehot.sum(dim=(0, 1))  # (K,)
        sums, counts = dist.all_reduce_sum(sums), dist.all_reduce_sum(counts)
        means = F.normalize(sums, dim=1)
        new = F.normalize(self.momentum * self.weight + (1 - self.momentum) * means, dim=1)
        self.weight.copy_(torch.where(counts[:, None] > 0, new, self.weight))


def object_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    assignment: torch.Tensor,
    valid: torch.Tensor,
    n_clusters: int,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Pools ``(B, P, D)`` tokens per (image, cluster) with ``assignment (B, P)`` and
    contrasts student pools with teacher pools across the global batch."""
    b, _, d = student.shape
    onehot = F.one_hot(assignment, n_clusters).to(student.dtype) * valid[..., None].to(
        student.dtype
    )
    counts = onehot.sum(dim=1)  # (B, K)
    s_pool = torch.einsum("bpk,bpd->bkd", onehot, F.normalize(student, dim=-1))  # (B, K, D)
    t_pool = torch.einsum("bpk,bpd->bkd", onehot, F.normalize(teacher.detach(), dim=-1))
    keep = (counts > 0).reshape(-1)  # (B*K,) empty clusters take no part
    loss, _ = _pair_loss(s_pool.reshape(-1, d), t_pool.reshape(-1, d), keep, temperature, False)
    return loss


# ------------------------------------------------------------------------- image level


def image_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 0.1,
    symmetric: bool = True,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pooled ``(B, D)`` student vs teacher vectors; the rest of the global batch negatives."""
    if valid is None:
        valid = torch.ones(student.shape[0], dtype=torch.bool, device=student.device)
    loss, _ = _pair_loss(student, teacher.detach(), valid.bool(), temperature, symmetric)
    return loss


# ------------------------------------------------------------------------- cross-modal


@dataclass
class CrossModalResult:
    loss: torch.Tensor  # 0 (no graph) when skipped; 0 (with graph) when no pair had a location
    skipped: bool  # fewer than two modalities (known on the host)
    # modality pairs with at least one shared valid location (global; a device tensor
    # unless skipped: deciding on the host would read the device every step)
    n_pairs: torch.Tensor | int


def _modality_names(
    features: dict[str, torch.Tensor], modalities: Sequence[str] | None
) -> list[str]:
    if modalities is not None:
        return list(modalities)
    names = set(features)
    if dist.is_dist():  # every rank must walk the same pairs in the same order
        allnames: list[list[str] | None] = [None] * dist.world_size()
        torch_dist.all_gather_object(allnames, sorted(names))
        names = {n for part in allnames for n in (part or [])}
    return sorted(names)


def cross_modal_loss(
    features: dict[str, torch.Tensor],
    valid: dict[str, torch.Tensor] | None = None,
    temperature: float = 0.1,
    modalities: Sequence[str] | None = None,
) -> CrossModalResult:
    """Pre-fusion student features ``name -> (B, D, h, w)`` on one token grid, validity
    ``name -> (B, h, w)``. Every pair of modalities is contrasted symmetrically at shared
    valid locations; the pairs' losses are averaged. ``modalities``: the names every rank
    knows (config); default: the union over ranks of ``features``' keys."""
    names = _modality_names(features, modalities)
    present = [n for n in names if n in features]
    if len(names) >= 2 and not present and dist.is_dist():
        raise ValueError(
            "cross_modal_loss: this rank has no modality features while others may; pass at "
            "least one modality's features so that every rank joins the same collectives"
        )
    if len(names) < 2 or not present:
        dev = next(iter(features.values())).device if features else None
        return CrossModalResult(torch.zeros((), device=dev), True, 0)
    ref = features[present[0]]
    d = ref.shape[1]
    empty = ref.permute(0, 2, 3, 1).reshape(-1, d)[:0]  # (0, D), still on the graph

    def rows(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = features[name]
        v = torch.ones(x.shape[0], *x.shape[2:], dtype=torch.bool, device=x.device)
        if valid is not None and name in valid:
            v = valid[name].bool()
        return x.permute(0, 2, 3, 1).reshape(-1, d), v.reshape(-1)  # (B*h*w, D), (B*h*w,)

    losses, oks = [], []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if a in features and b in features:
                (xa, va), (xb, vb) = rows(a), rows(b)
                v = va & vb
            elif dist.equal_rows_enabled():
                # this rank lacks one of them: all-invalid rows of the same count as every
                # other rank's (same token grid), still on the graph: gathers keep one shape
                xa = xb = ref.permute(0, 2, 3, 1).reshape(-1, d) * 0.0
                v = torch.zeros(xa.shape[0], dtype=torch.bool, device=ref.device)
            else:  # this rank lacks one of them; it still joins the pair's collectives
                xa = xb = empty
                v = torch.zeros(0, dtype=torch.bool, device=ref.device)
            loss, count = _pair_loss(xa, xb, v, temperature, symmetric=True)
            # a pair counts where it has a shared valid location on some rank (the global
            # count: the same on every rank), decided on the device (no host read)
            ok = count > 0
            losses.append(torch.where(ok, loss, 0.0))
            oks.append(ok)
    if not losses:
        return CrossModalResult(torch.zeros((), device=ref.device), True, 0)
    n_pairs = torch.stack(oks).sum()
    return CrossModalResult(torch.stack(losses).sum() / n_pairs.clamp_min(1), False, n_pairs)


# ------------------------------------------------------------------- variance/covariance


def variance_covariance(
    x: torch.Tensor, valid: torch.Tensor, target: float = 1.0, cov_weight: float = 0.04
) -> torch.Tensor:
    """VICReg's variance hinge + ``cov_weight`` x covariance penalty of the valid rows of
    ``x`` (B, D, h, w) (``valid (B, h, w)``), computed in float32 without a host sync:
    invalid rows get weight 0 in the moments; fewer than two valid rows give 0."""
    d = x.shape[1]
    rows = x.permute(0, 2, 3, 1).reshape(-1, d).float()  # (B*h*w, D)
    w = valid.reshape(-1).to(rows.dtype)  # (B*h*w,)
    n = w.sum()
    mean = (rows * w[:, None]).sum(0) / n.clamp_min(1.0)
    c = (rows - mean) * w[:, None]  # centred, 0 on invalid rows
    cov = c.T @ c / (n - 1.0).clamp_min(1.0)  # (D, D)
    std = torch.sqrt(torch.diagonal(cov) + 1e-4)
    var_term = F.relu(target - std).mean()
    off = cov - torch.diag(torch.diagonal(cov))
    cov_term = off.pow(2).sum() / d
    return (var_term + cov_weight * cov_term) * (n > 1).to(rows.dtype)


# ------------------------------------------------------------------- reconstruction


class SpectralDecoder(nn.Module):
    """Band statistics from tokens: ``(B, D, h, w)`` x band descriptors ``(C, E)`` ->
    ``(B, 2, C, h, w)`` (normalised patch mean, patch std), a bilinear form so that any
    band set is decoded."""

    def __init__(self, dim: int, descriptor_dim: int, hidden: int = 64):
        super().__init__()
        self.hidden = hidden
        self.token = nn.Linear(dim, 2 * hidden)
        self.band = nn.Sequential(
            nn.Linear(descriptor_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * hidden)
        )

    def forward(self, tokens: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        B, _, h, w = tokens.shape
        t = self.token(tokens.permute(0, 2, 3, 1)).view(B, h, w, 2, self.hidden)
        b = self.band(descriptors.to(t.dtype)).view(-1, 2, self.hidden)  # (C, 2, H)
        return torch.einsum("byxkd,ckd->bkcyx", t, b) / math.sqrt(self.hidden)


@torch.no_grad()
def patch_statistics(
    pixels: torch.Tensor, valid: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, p: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of :class:`SpectralDecoder` for one modality: ``pixels (B, T, C, H, W)``
    normalised per band, then per token the mean and std over its ``p x p`` pixels and
    valid dates: ``(B, 2, C, h, w)`` and validity ``(B, h, w)`` (a valid pixel exists)."""
    B, T, C, H, W = pixels.shape
    h, w = H // p, W // p
    x = (pixels.float() - mean.view(1, 1, C, 1, 1)) / std.view(1, 1, C, 1, 1)
    m = valid.float()[:, :, None].expand(B, T, C, H, W)  # (B, T, C, H, W)
    x = torch.where(m > 0, x, torch.zeros((), device=x.device))
    # (B, T, C, h, p, w, p) -> sums over dates and the patch's pixels
    xs = x.reshape(B, T, C, h, p, w, p)
    ms = m.reshape(B, T, C, h, p, w, p)
    n = ms.sum((1, 4, 6))  # (B, C, h, w)
    s1 = xs.sum((1, 4, 6))
    s2 = xs.square().sum((1, 4, 6))
    mu = s1 / n.clamp_min(1.0)
    sd = (s2 / n.clamp_min(1.0) - mu.square()).clamp_min(0.0).sqrt()
    return torch.stack([mu, sd], dim=1), n[:, 0] > 0  # (B, 2, C, h, w), (B, h, w)


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of ``pred``/``target`` ``(B, 2, C, h, w)`` over valid tokens
    ``(B, h, w)``; 0 (on the graph) without a valid token, no host sync."""
    w = valid[:, None, None].to(pred.dtype)  # (B, 1, 1, h, w)
    err = (pred.float() - target).square() * w
    n = w.sum() * pred.shape[1] * pred.shape[2]
    return err.sum() / n.clamp_min(1.0)


# ---------------------------------------------------------------------- heads and total


class ProjectionHead(nn.Module):
    """Linear-GELU-Linear on the last dim; the output is L2-normalised."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc2(F.gelu(self.fc1(x))), dim=-1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Per token of a ``(B, D, h, w)`` map; returns ``(B, D_out, h, w)``."""
        return self(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ProjectionHeads(nn.Module):
    """The student's (and, by EMA copy, the teacher's) heads: one per granularity, and the
    spectral decoder when the reconstruction term is on."""

    def __init__(self, in_dim: int, cfg: LossSection, descriptor_dim: int | None = None):
        super().__init__()
        h, o = cfg.head_hidden_dim, cfg.head_dim
        self.dense = ProjectionHead(in_dim, h, o)  # pixel and object terms
        self.pooled = ProjectionHead(in_dim, h, o)  # image term
        self.modal = ProjectionHead(in_dim, h, o)  # cross-modal term, shared by modalities
        if cfg.reconstruction:
            if descriptor_dim is None:
                raise ValueError("the reconstruction term needs the band descriptor size")
            self.spectral = SpectralDecoder(in_dim, descriptor_dim)


@dataclass
class ContrastiveInputs:
    """Projected features of one step. Fields a disabled term needs may be ``None``."""

    student_dense: torch.Tensor | None = None  # (B, D, h, w) view 1
    teacher_dense: torch.Tensor | None = None  # (B, D, h', w') view 2
    student_index: torch.Tensor | None = None  # (B, P) flat token index into h*w
    teacher_index: torch.Tensor | None = None  # (B, P) same ground location in view 2
    pair_valid: torch.Tensor | None = None  # (B, P)
    student_pooled: torch.Tensor | None = None  # (B, D)
    teacher_pooled: torch.Tensor | None = None  # (B, D)
    pooled_valid: torch.Tensor | None = None  # (B,)
    modal_features: dict[str, torch.Tensor] = field(default_factory=dict)  # (B, D, h, w)
    modal_valid: dict[str, torch.Tensor] = field(default_factory=dict)  # (B, h, w)
    modalities: Sequence[str] | None = None  # every modality name in the run (config)
    student_embedding: torch.Tensor | None = None  # (B, D, h, w) encoder output, pre-head
    student_valid: torch.Tensor | None = None  # (B, h, w)
    # reconstruction: modality -> (prediction, target (B, 2, C, h, w), valid (B, h, w))
    reconstruction: dict[str, tuple] = field(default_factory=dict)


@dataclass
class LossTerms:
    """``total`` carries the graph; each term is its unweighted value, detached, or None."""

    total: torch.Tensor
    pixel: torch.Tensor | None = None
    object: torch.Tensor | None = None
    image: torch.Tensor | None = None
    cross_modal: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    skipped: tuple[str, ...] = ()  # enabled terms that had nothing to contrast this step

    def log_dict(self) -> dict[str, float]:
        out = {"loss": float(self.total.detach())}
        for name in ("pixel", "object", "image", "cross_modal", "variance", "reconstruction"):
            v = getattr(self, name)
            if v is not None:
                out[f"loss_{name}"] = float(v)
        return out


class ContrastiveLoss(nn.Module):
    """The weighted sum of the enabled terms of ``cfg``; owns the object-level prototypes.

    In training mode each call also takes one EMA step of the prototypes.
    """

    def __init__(self, cfg: LossSection, dim: int | None = None, equal_rows: bool = False):
        super().__init__()
        self.cfg = cfg
        dim = cfg.head_dim if dim is None else dim
        self.prototypes = Prototypes(cfg.n_prototypes, dim, cfg.prototype_momentum)
        # every rank's micro-batches have the same shapes (the engine knows from the
        # config): the global InfoNCE gathers without exchanging (and reading) row counts
        self.equal_rows = equal_rows

    def forward(self, x: ContrastiveInputs) -> LossTerms:
        with dist.equal_rows(self.equal_rows):
            return self._forward(x)

    def _forward(self, x: ContrastiveInputs) -> LossTerms:
        c, t = self.cfg, self.cfg.temperature
        terms: dict[str, torch.Tensor] = {}
        skipped: list[str] = []
        if c.pixel:
            terms["pixel"] = pixel_loss(
                _need(x, "student_dense"), _need(x, "teacher_dense"), _need(x, "student_index"),
                _need(x, "teacher_index"), _need(x, "pair_valid"), t,
            )  # fmt: skip
        if c.object:
            terms["object"] = self._object_term(x)
        if c.image:
            s, tp = _need(x, "student_pooled"), _need(x, "teacher_pooled")
            terms["image"] = image_loss(s, tp, t, c.image_symmetric, x.pooled_valid)
        if c.cross_modal:
            cm = cross_modal_loss(x.modal_features, x.modal_valid or None, t, x.modalities)
            if cm.skipped:
                skipped.append("cross_modal")
            else:
                terms["cross_modal"] = cm.loss
        if c.reconstruction:
            if not x.reconstruction:
                raise ValueError(
                    "ContrastiveInputs.reconstruction is required by loss.reconstruction"
                )
            parts = [reconstruction_loss(*v) for v in x.reconstruction.values()]
            terms["reconstruction"] = torch.stack(parts).mean()
        if c.variance:
            terms["variance"] = variance_covariance(
                _need(x, "student_embedding"), _need(x, "student_valid"), c.variance_target,
                c.covariance_weight,
            )  # fmt: skip
        return self._combine(terms, skipped, x)

    def _object_term(self, x: ContrastiveInputs) -> torch.Tensor:
        c = self.cfg
        s_tok = gather_tokens(_need(x, "student_dense"), _need(x, "student_index"))  # (B, P, D)
        t_tok = gather_tokens(_need(x, "teacher_dense").detach(), _need(x, "teacher_index"))
        valid = _need(x, "pair_valid").bool()
        assign = self.prototypes.assign(t_tok, valid, c.sinkhorn_iters, c.sinkhorn_epsilon)
        loss = object_loss(s_tok, t_tok, assign, valid, c.n_prototypes, c.temperature)
        if self.training:
            self.prototypes.update(t_tok, assign, valid)
        return loss

    def _combine(
        self, terms: dict[str, torch.Tensor], skipped: list[str], x: ContrastiveInputs
    ) -> LossTerms:
        weights = {
            "pixel": self.cfg.pixel_weight, "object": self.cfg.object_weight,
            "image": self.cfg.image_weight, "cross_modal": self.cfg.cross_modal_weight,
            "variance": self.cfg.variance_weight,
            "reconstruction": self.cfg.reconstruction_weight,
        }  # fmt: skip
        parts = [weights[k] * v for k, v in terms.items()]
        if parts:
            total = torch.stack(parts).sum()
        else:
            # Nothing to contrast anywhere: a zero that still reaches the student, so that
            # backward (and the engine's gradient all-reduce) runs the same on every rank.
            feats = (x.student_pooled, x.student_dense, *x.modal_features.values())
            total = next(v for v in feats if v is not None).sum() * 0.0
        detached = {k: v.detach() for k, v in terms.items()}
        return LossTerms(total=total, skipped=tuple(skipped), **detached)


def _need(x: ContrastiveInputs, name: str) -> torch.Tensor:
    t = getattr(x, name)
    if t is None:
        raise ValueError(
            f"ContrastiveInputs.{name} is required by an enabled loss term (see LossSection)"
        )
    return t


def expected_uniform_loss(n_negatives: int) -> float:
    """InfoNCE of uninformative features: ``log(n)``. A sanity level for logs and tests."""
    return math.log(max(1, n_negatives))
