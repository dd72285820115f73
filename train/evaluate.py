"""Frozen-encoder evaluation on labelled synthetic scenes: linear probe and retrieval.

Two measures of whether pretraining taught the encoder anything, both on scenes held
out by location (train and test scenes are different places: different seeds, origins
and class maps), both computed the same way for a trained and a random encoder:

- **Linear probe**: per-token multinomial logistic regression on the frozen dense
  embeddings (``EncoderOutput.dense``), labels downsampled to the token grid by majority
  vote over each patch; fit on the train scenes (L-BFGS, L2), accuracy on the test scenes.
  Only tokens whose patch is at least ``min_purity`` one class count, so mixed border
  tokens do not decide the score.
- **Cross-modal retrieval**: every valid S1 pre-fusion token of the test scenes queries
  all S2 pre-fusion tokens of the test scenes (cosine similarity); top-1 is correct when
  it is the S2 token at the same location. Chance is ``1 / N`` for ``N`` candidates.

Reusable by a later ``rsfm eval``: :func:`evaluate` takes any ``RSFMEncoder``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rsfm_train.evalreal.cli import EXAMPLE as REAL_EXAMPLE
from rsfm_train.evalreal.cli import add_real_arguments

if TYPE_CHECKING:
    import numpy as np
    import torch

# numpy and torch are imported inside the functions: `rsfm eval --help` stays fast.
log = logging.getLogger("rsfm_train")

DEFAULT_SENSORS = {"s2": "sentinel2_l2a", "s1": "sentinel1_grd"}


@dataclass
class LabelledScene:
    """One place: unbatched modalities ``[T, C, H, W]`` and a class map ``(H, W)``."""

    modalities: dict[str, object]  # name -> ModalityData
    labels: np.ndarray  # (H, W) int class ids
    class_names: tuple[str, ...]


def make_eval_scenes(
    n: int,
    size: int = 32,
    seed: int = 10_000,
    num_classes: int = 6,
    num_dates: int = 4,
    sensors: Mapping[str, str] | None = None,
) -> list[LabelledScene]:
    """``n`` synthetic scenes of ``size`` px at distinct places (seed ``seed + i``, origins
    ``size`` * 10 m * 4 apart) with their land-cover labels."""
    import numpy as np

    from rsfm_core import synthetic

    sensors = dict(sensors or DEFAULT_SENSORS)
    out = []
    for i in range(n):
        sc = synthetic.make_scene(
            size, num_classes=num_classes, num_dates=num_dates, seed=seed + i,
            sensors=tuple(dict.fromkeys(sensors.values())),
            origin=(600000.0 + 4 * size * 10.0 * i, 5100000.0),
        )  # fmt: skip
        mods = {name: sc.modalities[s] for name, s in sensors.items()}
        out.append(LabelledScene(mods, sc.labels.astype(np.int64), sc.class_names))
    return out


def token_labels(labels: np.ndarray, patch: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Majority class ``(h, w)`` of each ``patch x patch`` block and its purity (the
    majority's share, 0..1). Ties go to the smaller class id."""
    import numpy as np

    H, W = labels.shape
    h, w = H // patch, W // patch
    blocks = labels[: h * patch, : w * patch].reshape(h, patch, w, patch).transpose(0, 2, 1, 3)
    counts = np.stack([(blocks == k).sum(axis=(2, 3)) for k in range(num_classes)], -1)  # (h, w, K)
    return counts.argmax(-1), counts.max(-1) / float(patch * patch)


@dataclass
class TokenEmbeddings:
    """Per valid token of a set of scenes (rows aligned across fields)."""

    dense: torch.Tensor  # (N, D) fused embeddings
    modal: dict[str, torch.Tensor]  # name -> (N, D) pre-fusion features
    modal_valid: dict[str, torch.Tensor]  # name -> (N,) bool
    labels: torch.Tensor  # (N,) majority class
    purity: torch.Tensor  # (N,)
    scene: torch.Tensor  # (N,) scene index


def embed_scenes(
    encoder: torch.nn.Module, scenes: Sequence[LabelledScene], batch: int = 4
) -> TokenEmbeddings:
    """Run the frozen ``encoder`` on whole scenes (all dates) and flatten valid tokens."""
    import torch

    with torch.no_grad():
        return _embed_scenes(encoder, scenes, batch)


def _embed_scenes(encoder, scenes: Sequence[LabelledScene], batch: int) -> TokenEmbeddings:
    import torch

    from rsfm_core.sample import collate

    was_training = encoder.training
    encoder.eval()
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("dense", "labels", "purity", "scene")}
    modal: dict[str, list[torch.Tensor]] = {}
    mvalid: dict[str, list[torch.Tensor]] = {}
    K = max(len(s.class_names) for s in scenes)
    for b0 in range(0, len(scenes), batch):
        part = scenes[b0 : b0 + batch]
        names = list(part[0].modalities)
        out = encoder({n: collate([s.modalities[n] for s in part]) for n in names})
        B, D, h, w = out.dense.shape
        patch = part[0].labels.shape[0] // h
        for i, s in enumerate(part):
            lab, pur = token_labels(s.labels, patch, K)
            keep = out.valid[i].reshape(-1).cpu()  # (h*w,)
            rows["dense"].append(out.dense[i].reshape(D, -1).T.float().cpu()[keep])  # (n, D)
            rows["labels"].append(torch.from_numpy(lab.reshape(-1))[keep])
            rows["purity"].append(torch.from_numpy(pur.reshape(-1)).float()[keep])
            rows["scene"].append(torch.full((int(keep.sum()),), b0 + i))
            for n in names:
                modal.setdefault(n, []).append(
                    out.modalities[n][i].reshape(D, -1).T.float().cpu()[keep]
                )
                mvalid.setdefault(n, []).append(out.modality_valid[n][i].reshape(-1).cpu()[keep])
    encoder.train(was_training)
    return TokenEmbeddings(
        dense=torch.cat(rows["dense"]),
        modal={n: torch.cat(v) for n, v in modal.items()},
        modal_valid={n: torch.cat(v) for n, v in mvalid.items()},
        labels=torch.cat(rows["labels"]),
        purity=torch.cat(rows["purity"]),
        scene=torch.cat(rows["scene"]),
    )


def linear_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    l2: float = 1e-3,
    iters: int = 100,
) -> float:
    """Test accuracy of multinomial logistic regression fit by L-BFGS on standardised
    features (train statistics), with an L2 penalty ``l2`` on the weights."""
    import torch
    import torch.nn.functional as F

    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xtr, xte = (x_train - mean) / std, (x_test - mean) / std
    g = torch.Generator().manual_seed(0)
    W = (
        0.01 * torch.randn(xtr.shape[1], num_classes, generator=g, dtype=torch.float64)
    ).requires_grad_()
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    xtr, xte = xtr.double(), xte.double()
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ W + b, y_train) + l2 * W.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((xte @ W + b).argmax(1) == y_test).double().mean())


def few_shot_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    shots: int,
    draws: int = 5,
    l2: float = 1e-2,
) -> float:
    """Mean test accuracy of :func:`linear_probe` fit on ``shots`` random train tokens per
    class (all of a class if it has fewer), over ``draws`` seeded draws. Label-scarce
    probing separates good representations from random ones more sharply than the full
    probe: with few labels a classifier cannot undo a poor feature geometry."""
    import numpy as np
    import torch

    accs = []
    for d in range(draws):
        g = torch.Generator().manual_seed(d)
        idx = []
        for k in range(num_classes):
            members = (y_train == k).nonzero().flatten()
            idx.append(members[torch.randperm(len(members), generator=g)[:shots]])
        pick = torch.cat(idx)
        accs.append(linear_probe(x_train[pick], y_train[pick], x_test, y_test, num_classes, l2=l2))
    return float(np.mean(accs))


def retrieval_top1(query: torch.Tensor, keys: torch.Tensor) -> float:
    """Share of rows ``i`` of ``query (N, D)`` whose most cosine-similar row of
    ``keys (N, D)`` is row ``i``."""
    import torch
    import torch.nn.functional as F

    q, k = F.normalize(query.double(), dim=1), F.normalize(keys.double(), dim=1)
    hits = (q @ k.T).argmax(1) == torch.arange(q.shape[0])
    return float(hits.double().mean())


def evaluate(
    encoder: torch.nn.Module,
    train_scenes: Sequence[LabelledScene],
    test_scenes: Sequence[LabelledScene],
    query: str = "s1",
    key: str = "s2",
    min_purity: float = 0.75,
    shots: int | None = 10,
) -> dict[str, float]:
    """Probe accuracy (full labels, and ``shots`` labels per class; with the
    majority-class baseline) and ``query -> key`` retrieval top-1 (and chance) of a frozen
    ``encoder``."""
    import torch

    tr, te = embed_scenes(encoder, train_scenes), embed_scenes(encoder, test_scenes)
    K = max(len(s.class_names) for s in (*train_scenes, *test_scenes))
    mtr, mte = tr.purity >= min_purity, te.purity >= min_purity
    probe = (tr.dense[mtr], tr.labels[mtr], te.dense[mte], te.labels[mte], K)
    top = torch.bincount(tr.labels[mtr], minlength=K).argmax()
    out = {
        "probe_acc": linear_probe(*probe),
        "probe_majority": float((te.labels[mte] == top).double().mean()),
        "probe_train_tokens": float(mtr.sum()),
        "probe_test_tokens": float(mte.sum()),
    }
    if shots:
        out[f"probe_{shots}shot_acc"] = few_shot_probe(*probe, shots)
    if query in te.modal and key in te.modal:
        both = te.modal_valid[query] & te.modal_valid[key]
        n = int(both.sum())
        out["retrieval_top1"] = (
            retrieval_top1(te.modal[query][both], te.modal[key][both]) if n else float("nan")
        )
        out["retrieval_chance"] = 1.0 / max(1, n)
        out["retrieval_candidates"] = float(n)
    return out


# ------------------------------------------------------------------------------ CLI

_EXAMPLE = """example:
  rsfm export runs/tiny_cpu exported/tiny
  rsfm eval exported/tiny --random-baseline           # or: python -m rsfm_train.evaluate ...
  rsfm eval exported/tiny --json runs/eval_tiny.json
Prints the full and few-shot probe accuracy and S1 -> S2 retrieval top-1 of each model
(and of a randomly initialised encoder of the first model's architecture)."""
_EXAMPLE += "\n\n" + REAL_EXAMPLE  # rsfm eval --real

_DESCRIPTION = (
    "Frozen-encoder linear probe (full and few-shot) and S1 -> S2 retrieval on labelled "
    "synthetic scenes held out by location; the same measures for a random init with "
    "--random-baseline."
)


def _add_arguments(p) -> None:
    p.add_argument(
        "models", nargs="*", help="exported model folders (config.json + model.safetensors)"
    )
    p.add_argument("--random-baseline", action="store_true", help="also a random init (seed 0)")
    p.add_argument("--scenes", type=int, default=8, help="probe-train and test scenes each (8)")
    p.add_argument("--size", type=int, default=32, help="scene side in pixels (32)")
    p.add_argument("--shots", type=int, default=10, help="labels per class of the few-shot probe")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    add_real_arguments(p)  # --real and its flags: rsfm_train.evalreal


def add_eval_parser(subparsers):
    """Register ``rsfm eval`` on the ``rsfm`` command's subparsers."""
    import argparse

    p = subparsers.add_parser(
        "eval",
        help="frozen-encoder probe + cross-modal retrieval vs random init (synthetic scenes)",
        description=_DESCRIPTION,
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run_eval)
    return p


def run_eval(args) -> int:
    import json
    import sys
    from pathlib import Path

    from rsfm_core.cliutil import setup_threads

    setup_threads(workers=0)  # RSFM_THREADS=N overrides

    if args.real:
        from rsfm_train.evalreal.cli import run_real

        return run_real(args)
    if not args.models:
        print("rsfm eval: give at least one exported model folder (or --real)", file=sys.stderr)
        return 2

    import torch

    from rsfm_core.model import RSFMEncoder, load_pretrained, read_config

    train = make_eval_scenes(args.scenes, args.size, seed=10_000)
    test = make_eval_scenes(args.scenes, args.size, seed=20_000)
    models = {m: load_pretrained(m) for m in args.models}
    if args.random_baseline:
        torch.manual_seed(0)
        models["random init"] = RSFMEncoder(read_config(args.models[0]))
    cols = ("probe_acc", f"probe_{args.shots}shot_acc", "retrieval_top1", "retrieval_chance")
    print(f"{'model':<40}" + "".join(f"{c:>20}" for c in cols))
    results = {}
    for name, model in models.items():
        r = results[name] = evaluate(model, train, test, shots=args.shots)
        print(f"{name:<40}" + "".join(f"{r.get(c, float('nan')):>20.4f}" for c in cols))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        settings = {k: getattr(args, k) for k in ("scenes", "size", "shots")}
        Path(args.json).write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m rsfm_train.evaluate",
        description=_DESCRIPTION,
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    args = p.parse_args(argv)
    from rsfm_core.cliutil import run_command

    return run_command("python -m rsfm_train.evaluate", run_eval, args)  # one-line errors


if __name__ == "__main__":
    raise SystemExit(main())
