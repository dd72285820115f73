"""Frozen-feature probes: a linear probe and a cosine kNN, hyperparameters chosen by inner
cross-validation on the training part only.

- **Linear probe**: multinomial logistic regression (single-label) or one logistic
  regression per label (multi-label), in float64 torch, fit by L-BFGS (strong Wolfe line
  search, at most ``max_iter`` iterations) on features standardised with the training
  part's mean/std. Loss: mean cross-entropy (or mean binary cross-entropy summed over
  labels) + ``l2 * ||W||^2`` (the bias is not penalised). Parameters start at zero, so a
  fit is deterministic.
- **kNN**: cosine similarity between standardised features (training statistics); the
  score of a class (label) is how many of the ``k`` nearest training samples carry it,
  plus 1e-3 x their mean similarity, which only breaks ties between equal counts.
- **Inner CV**: ``folds`` folds of the TRAINING part (stratified round-robin for class
  labels, plain shuffled split for multi-label), drawn with the run's seed. The linear
  probe picks ``l2`` from :data:`L2_GRID` by the lowest mean held-out log-loss (smooth,
  so tiny training sets still rank the candidates; ties go to the stronger penalty).
  kNN picks ``k`` from :data:`K_GRID` (capped at the smallest inner training part) by the
  highest held-out accuracy (multi-label: mAP); ties go to the smaller ``k``. The chosen
  value is then refit on the whole training part. Test data never enter the choice.
- **Batching**: all folds x candidates (x splits) are fit as ONE L-BFGS problem, the sum
  of the independent objectives (:func:`fit_many`); each training set's rows go through
  one matrix product per evaluation for all its probes. Many tiny fits would otherwise
  cost mostly Python overhead. The joint stopping rule (largest gradient entry < 1e-6
  or ``max_iter``) applies to all probes together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
K_GRID = (1, 3, 5, 10, 20)
INNER_FOLDS = 5
KNN_TIE_BREAK = 1e-3
MAX_ITER = 200


@dataclass
class ProbeResult:
    """Test scores ``(N_test, K)`` (logits, or kNN votes), the chosen hyperparameter and
    the inner-CV score of every candidate (log-loss for ``l2``, accuracy/mAP for ``k``)."""

    scores: np.ndarray
    choice: float
    curve: dict[float, float]


# ---------------------------------------------------------------------------- folds


def inner_folds(
    y: np.ndarray, folds: int, seed: int, multilabel: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, held_out)`` index pairs into ``y`` (the training part only). Stratified:
    each class's shuffled members are dealt round-robin onto the folds, continuing where
    the previous class stopped, so fold sizes differ by at most one."""
    n = len(y)
    k = min(folds, n)
    if k < 2:
        raise ValueError(f"inner cross-validation needs at least 2 training samples, got {n}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=np.int64)
    if multilabel:
        fold_of[rng.permutation(n)] = np.arange(n) % k
    else:
        start = 0
        for c in np.unique(y):
            members = rng.permutation(np.flatnonzero(y == c))
            fold_of[members] = (start + np.arange(len(members))) % k
            start = (start + len(members)) % k
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]


# ---------------------------------------------------------------------------- linear


@dataclass
class LinearModel:
    """``P`` fitted linear probes, as maps of the RAW features: the standardisation is
    folded in (``scores = x @ weight[p] + bias[p]``)."""

    weight: torch.Tensor  # (P, D, K) float64
    bias: torch.Tensor  # (P, K)

    def scores(self, x: np.ndarray, p: int = 0) -> torch.Tensor:
        """Logits ``(N, K)`` of probe ``p`` on ``x (N, D)``."""
        return torch.as_tensor(x, dtype=torch.float64) @ self.weight[p] + self.bias[p]


def _per_sample_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """(..., K) logits -> (...) cross-entropy (multi-label: BCE summed over labels);
    ``y``: (...) class ids or (..., K) 0/1."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(-1)
    K = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, K), y.reshape(-1), reduction="none").view(y.shape)


def _target(y: np.ndarray, multilabel: bool) -> torch.Tensor:
    return torch.as_tensor(y, dtype=torch.float64 if multilabel else torch.long)


def fit_many(
    sets: list[tuple[np.ndarray, np.ndarray]],
    problems: list[tuple[int, np.ndarray, float]],
    num_outputs: int,
    multilabel: bool = False,
    max_iter: int = MAX_ITER,
) -> LinearModel:
    """Fit ``P`` independent linear probes as ONE L-BFGS problem. ``sets``: data sets
    ``(x (n_s, D), y)``; ``problems[p] = (s, rows, l2)``: probe ``p`` is fit on
    ``sets[s]`` restricted to ``rows``, standardised with those rows' mean/std, with
    penalty ``l2``. The joint objective is the sum of the ``P`` objectives; its optimum is
    every probe's own optimum (their parameters do not interact). All probes of a set
    share one matrix product ``x @ [V_1 .. V_P]``, which is what makes the inner
    cross-validation cheap: one pass over a set's rows per L-BFGS evaluation, not one per
    fold and candidate."""
    S, n, D, K = len(sets), max(len(x) for x, _ in sets), sets[0][0].shape[1], num_outputs
    per_set = [[j for j, pr in enumerate(problems) if pr[0] == s] for s in range(S)]
    Pm = max(len(js) for js in per_set)
    f64 = dict(dtype=torch.float64)
    X = torch.zeros(S, n, D, **f64)
    Y = torch.zeros(
        (S, n, K) if multilabel else (S, n), dtype=_target(sets[0][1], multilabel).dtype
    )
    weight = torch.zeros(S, n, Pm, **f64)  # 1 / rows on a probe's rows: its mean loss
    mean, std = torch.zeros(S, Pm, D, **f64), torch.ones(S, Pm, D, **f64)
    lam = torch.zeros(S, Pm, **f64)
    for s, (x, y) in enumerate(sets):
        xt = torch.as_tensor(x, **f64)
        X[s, : len(x)], Y[s, : len(x)] = xt, _target(y, multilabel)
        for q, j in enumerate(per_set[s]):
            rows = torch.as_tensor(problems[j][1], dtype=torch.long)
            mean[s, q] = xt[rows].mean(0)
            std[s, q] = xt[rows].std(0, correction=0).clamp_min(1e-8)
            weight[s, rows, q] = 1.0 / len(rows)
            lam[s, q] = problems[j][2]
    W = torch.zeros(S, Pm, D, K, **f64, requires_grad=True)  # standardised-feature weights
    b = torch.zeros(S, Pm, K, **f64, requires_grad=True)

    def raw() -> tuple[torch.Tensor, torch.Tensor]:
        V = W / std[..., None]  # (S, P, D, K): weights on raw features
        return V, b - torch.einsum("spd,spdk->spk", mean, V)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        V, c = raw()
        VV = V.permute(0, 2, 1, 3).reshape(S, D, Pm * K)  # (S, D, P*K)
        logits = torch.bmm(X, VV).view(S, n, Pm, K) + c[:, None]  # (S, n, P, K)
        target = Y[:, :, None].expand(S, n, Pm, *Y.shape[2:])  # (S, n, P[, K])
        loss = (_per_sample_loss(logits, target, multilabel) * weight).sum()
        loss = loss + (lam * W.square().sum((2, 3))).sum()
        loss.backward()
        return loss

    opt = torch.optim.LBFGS(
        [W, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-10,
        history_size=10, line_search_fn="strong_wolfe",
    )  # fmt: skip
    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        V, c = raw()
    order = [(s, q) for s, js in enumerate(per_set) for q in range(len(js))]
    flat = sorted(zip([j for js in per_set for j in js], order))
    return LinearModel(
        torch.stack([V[s, q] for _, (s, q) in flat]), torch.stack([c[s, q] for _, (s, q) in flat])
    )


def fit_linear(
    x: np.ndarray,
    y: np.ndarray,
    l2: float,
    num_outputs: int,
    multilabel: bool = False,
    max_iter: int = MAX_ITER,
) -> LinearModel:
    """Fit one linear probe on ``x (N, D)``, ``y (N,)`` class ids or ``(N, L)`` 0/1."""
    return fit_many([(x, y)], [(0, np.arange(len(x)), l2)], num_outputs, multilabel, max_iter)


def select_l2_many(
    train_sets: list[tuple[np.ndarray, np.ndarray]],
    num_outputs: int,
    multilabel: bool,
    seeds: list[int],
    grid=L2_GRID,
    folds: int = INNER_FOLDS,
    max_iter: int = MAX_ITER,
) -> list[tuple[float, dict[float, float]]]:
    """For each training set ``(x, y)`` (inner folds drawn with its seed), the ``l2`` of
    ``grid`` with the lowest mean held-out log-loss, and that loss per candidate. Every
    set x fold x candidate is fit at once (:func:`fit_many`); ties go to the stronger
    penalty."""
    problems, held = [], []  # (set, inner-train rows, l2) / (set, held-out rows, l2)
    for s, ((_, y), seed) in enumerate(zip(train_sets, seeds)):
        for tr, va in inner_folds(y, folds, seed, multilabel):
            for lam in grid:
                problems.append((s, tr, lam))
                held.append((s, va, lam))
    model = fit_many(train_sets, problems, num_outputs, multilabel, max_iter)
    losses = [{lam: [] for lam in grid} for _ in train_sets]
    with torch.no_grad():
        for p, (s, va, lam) in enumerate(held):
            x, y = train_sets[s]
            h = _per_sample_loss(model.scores(x[va], p), _target(y[va], multilabel), multilabel)
            losses[s][lam].append(float(h.mean()))
    out = []
    for per in losses:
        curve = {float(lam): float(np.mean(v)) for lam, v in per.items()}
        out.append((min(sorted(curve, reverse=True), key=lambda lam: curve[lam]), curve))
    return out


def linear_probe_many(
    splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_outputs: int,
    multilabel: bool = False,
    seeds: list[int] | None = None,
    grid=L2_GRID,
    folds: int = INNER_FOLDS,
    max_iter: int = MAX_ITER,
) -> list[ProbeResult]:
    """:func:`linear_probe` on several ``(x_train, y_train, x_test)`` splits, batched:
    one joint fit for every inner-CV choice, one for the refits."""
    seeds = list(range(len(splits))) if seeds is None else list(seeds)
    train_sets = [(xtr, ytr) for xtr, ytr, _ in splits]
    chosen = select_l2_many(train_sets, num_outputs, multilabel, seeds, grid, folds, max_iter)
    refit = [
        (s, np.arange(len(x)), lam) for s, ((x, _), (lam, _)) in enumerate(zip(train_sets, chosen))
    ]
    model = fit_many(train_sets, refit, num_outputs, multilabel, max_iter)
    with torch.no_grad():
        scores = [model.scores(xte, p).numpy() for p, (*_, xte) in enumerate(splits)]
    return [ProbeResult(sc, lam, curve) for sc, (lam, curve) in zip(scores, chosen)]


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    num_outputs: int,
    multilabel: bool = False,
    seed: int = 0,
    grid=L2_GRID,
    folds: int = INNER_FOLDS,
    max_iter: int = MAX_ITER,
) -> ProbeResult:
    """Choose ``l2`` by inner CV on the training part, refit there, score ``x_test``."""
    split = [(x_train, y_train, x_test)]
    return linear_probe_many(split, num_outputs, multilabel, [seed], grid, folds, max_iter)[0]


# ---------------------------------------------------------------------------- kNN


def knn_scores(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    k: int,
    num_outputs: int,
    multilabel: bool = False,
    chunk: int = 8192,
) -> np.ndarray:
    """``(N_test, K)`` vote scores of the ``k`` cosine-nearest training samples."""
    xtr = torch.as_tensor(x_train, dtype=torch.float64)
    mean, std = xtr.mean(0), xtr.std(0, correction=0).clamp_min(1e-8)
    keys = F.normalize((xtr - mean) / std, dim=1)  # (N_train, D)
    if multilabel:
        onehot = torch.as_tensor(y_train, dtype=torch.float64)  # (N_train, L)
    else:
        onehot = F.one_hot(torch.as_tensor(y_train, dtype=torch.long), num_outputs).double()
    k = min(k, keys.shape[0])
    out = []
    for i in range(0, len(x_test), chunk):
        q = torch.as_tensor(x_test[i : i + chunk], dtype=torch.float64)
        q = F.normalize((q - mean) / std, dim=1)
        sims, idx = (q @ keys.T).topk(k, dim=1)  # (n, k)
        votes = onehot[idx]  # (n, k, K)
        tie = (votes * sims[..., None]).sum(1) / k
        out.append((votes.sum(1) + KNN_TIE_BREAK * tie).numpy())
    return np.concatenate(out) if out else np.zeros((0, num_outputs))


def _knn_quality(y: np.ndarray, scores: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        present = y.any(0)
        if not present.any():
            return float("nan")
        return metrics.mean_average_precision(y[:, present], scores[:, present])[0]
    return metrics.accuracy(y, scores.argmax(1))


def knn_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    num_outputs: int,
    multilabel: bool = False,
    seed: int = 0,
    grid=K_GRID,
    folds: int = INNER_FOLDS,
) -> ProbeResult:
    """Choose ``k`` by inner CV on the training part, then score ``x_test``."""
    splits = inner_folds(y_train, folds, seed, multilabel)
    cap = min(len(tr) for tr, _ in splits)
    cands = [k for k in sorted(grid) if k <= cap] or [1]
    quality = {k: [] for k in cands}
    for tr, va in splits:
        for k in cands:
            s = knn_scores(x_train[tr], y_train[tr], x_train[va], k, num_outputs, multilabel)
            quality[k].append(_knn_quality(y_train[va], s, multilabel))
    curve = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
             for k, v in quality.items()}  # fmt: skip
    finite = [k for k in cands if np.isfinite(curve[k])]
    best = max(finite, key=lambda k: curve[k]) if finite else cands[0]  # ties: smaller k
    scores = knn_scores(x_train, y_train, x_test, best, num_outputs, multilabel)
    return ProbeResult(scores, float(best), {float(k): v for k, v in curve.items()})
