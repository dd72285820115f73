"""Design measurement: shared vs per-modality spatial encoders (``shared_spatial``).

Supervised per-token land-cover classification on :mod:`rsfm_core.synthetic` scenes
(Sentinel-2 L2A + Sentinel-1, 4 dates): an encoder of the given size (modalities
restricted to s2 + s1, so neither variant carries unused encoders) plus a linear head
on ``EncoderOutput.dense``, trained from scratch with AdamW on random 32 x 32 px chips
of training scenes, scored on every token of held-out scenes. Reports accuracy,
parameters and time per step. The numbers in docs/model.md come from::

    python -m benchmarks.model_ablation --steps 300

It runs on the CPU in minutes; its purpose is a relative comparison, not a benchmark.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsfm_core.model import build_model
from rsfm_core.sample import ModalityData
from rsfm_core.synthetic import make_scene

SENSORS = {"s2": "sentinel2_l2a", "s1": "sentinel1_grd"}


@dataclass
class Chip:
    batch: dict[str, ModalityData]  # batched, B = 1
    labels: torch.Tensor  # (h, w) majority class of each token's patch


def _scene_chips(seed: int, size: int, chip: int, patch: int, num_classes: int) -> list[Chip]:
    """Every non-overlapping ``chip`` x ``chip`` window of one synthetic scene."""
    scene = make_scene(
        size=size, num_classes=num_classes, sensors=tuple(SENSORS.values()), seed=seed
    )
    onehot = F.one_hot(torch.from_numpy(scene.labels).long(), num_classes)  # (H, W, K)
    votes = F.avg_pool2d(onehot.permute(2, 0, 1)[None].float(), patch)[0]  # (K, h, w)
    tok_labels = votes.argmax(0)  # (h, w)
    chips, t = [], chip // patch
    for r in range(0, size, chip):
        for c in range(0, size, chip):
            batch = {m: scene[s].crop(r, c, chip, chip).unsqueeze() for m, s in SENSORS.items()}
            chips.append(
                Chip(batch, tok_labels[r // patch : r // patch + t, c // patch : c // patch + t])
            )
    return chips


def _collate(chips: list[Chip]) -> tuple[dict[str, ModalityData], torch.Tensor]:
    batch = {}
    for m in SENSORS:
        ds = [c.batch[m] for c in chips]
        batch[m] = ModalityData(
            torch.cat([d.pixels for d in ds]),  # (B, T, C, H, W)
            torch.cat([d.valid for d in ds]),
            torch.cat([d.dates for d in ds]),
            ds[0].sensor,
            ds[0].bands,
        )
    return batch, torch.stack([c.labels for c in chips])  # (B, h, w)


def run_variant(shared: bool, train: list[Chip], test: list[Chip], args) -> dict:
    torch.manual_seed(args.seed)
    mods = {
        "s2": {"sensor": SENSORS["s2"], "patch": 4},
        "s1": {"sensor": SENSORS["s1"], "patch": 4},
    }
    model = build_model(args.model, modalities=mods, shared_spatial=shared)
    head = nn.Linear(model.embed_dim, args.classes)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    for step in range(args.steps):
        for g in opt.param_groups:  # linear warm-up, then cosine
            w = min(1.0, (step + 1) / 30)
            g["lr"] = (
                args.lr * w * 0.5 * (1 + torch.cos(torch.tensor(step / args.steps * 3.1416)).item())
            )
        idx = torch.randint(len(train), (args.batch,), generator=gen).tolist()
        batch, labels = _collate([train[i] for i in idx])
        out = model(batch)
        logits = head(out.dense.permute(0, 2, 3, 1))  # (B, h, w, K)
        loss = F.cross_entropy(logits[out.valid], labels[out.valid])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step_s = (time.perf_counter() - t0) / args.steps
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for i in range(0, len(test), 16):
            batch, labels = _collate(test[i : i + 16])
            out = model(batch)
            pred = head(out.dense.permute(0, 2, 3, 1)).argmax(-1)  # (B, h, w)
            correct += int((pred == labels)[out.valid].sum())
            total += int(out.valid.sum())
    return {
        "shared_spatial": shared,
        "params": sum(p.numel() for p in model.parameters()),
        "accuracy": correct / total,
        "final_loss": loss.item(),
        "s_per_step": step_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="rsfm_tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--train-scenes", type=int, default=6)
    p.add_argument("--test-scenes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    mk = lambda s: _scene_chips(s, 128, 32, 4, args.classes)  # noqa: E731
    train = [c for s in range(args.train_scenes) for c in mk(1000 + s)]
    test = [c for s in range(args.test_scenes) for c in mk(2000 + s)]
    print(
        f"{args.model}, {args.steps} steps x {args.batch} chips (32x32 px, S2+S1, T=4), "
        f"{len(train)} train / {len(test)} test chips, {torch.get_num_threads()} threads"
    )
    print(f"{'shared_spatial':>14} {'params':>10} {'accuracy':>9} {'loss':>7} {'s/step':>7}")
    for shared in (True, False):
        r = run_variant(shared, train, test, args)
        print(
            f"{r['shared_spatial']!s:>14} {r['params']:>10,} {r['accuracy']:>9.3f} "
            f"{r['final_loss']:>7.3f} {r['s_per_step']:>7.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
