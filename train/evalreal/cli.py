"""The ``--real`` flags of ``rsfm eval`` and their handler.

Only argparse at module level: ``rsfm --help`` must not import torch for this.
"""

from __future__ import annotations

import sys

TASK_NAMES = ("eurosat", "reben", "salinas_a", "sen1floods11", "presto_algae")

EXAMPLE = """real data (--real):
  rsfm eval --real --random rsfm_tiny --out runs/eval_real          # raw bands vs random init
  rsfm eval --real --checkpoint demo=demo_out/model --out runs/eval_real
  rsfm eval --real --checkpoint exported/tiny --tasks eurosat,presto_algae --seeds 5
Each task (EuroSAT-MS, reBEN, Salinas-A, Sen1Floods11, Presto algae) is measured for the
raw bands, a random init and every checkpoint in the same run; see docs/evaluation.md."""


def add_real_arguments(p) -> None:
    """Add the real-data evaluation flags to the ``rsfm eval`` parser ``p``."""
    g = p.add_argument_group("real-data evaluation (--real; docs/evaluation.md)")
    g.add_argument(
        "--real", action="store_true",
        help="linear probe + kNN on the five real labelled sets instead of synthetic scenes",
    )  # fmt: skip
    g.add_argument(
        "--checkpoint", action="append", default=[], metavar="[LABEL=]PATH",
        help="exported model folder (config.json + model.safetensors); repeatable; positional "
        "model folders count too",
    )  # fmt: skip
    g.add_argument(
        "--random", metavar="NAME", default="rsfm_tiny",
        help="registered size of the random-init baseline when no checkpoint is given "
        "(default rsfm_tiny); with checkpoints it has the first checkpoint's config",
    )  # fmt: skip
    g.add_argument("--random-seed", type=int, default=0, help="seed of the random init (0)")
    g.add_argument(
        "--tasks", default="all",
        help=f"comma-separated subset of {','.join(TASK_NAMES)} (default all)",
    )  # fmt: skip
    g.add_argument(
        "--seeds", type=int, default=None,
        help="seeds = splits / draws per task (default 5; 2 with --quick)",
    )  # fmt: skip
    g.add_argument(
        "--data", default=None,
        help="data root (default $RSFM_REAL_DATA, else ../shared/data beside the repository)",
    )  # fmt: skip
    g.add_argument("--out", metavar="DIR", help="write DIR/eval.json and DIR/eval.md")
    g.add_argument(
        "--quick", action="store_true",
        help="smoke run: 5 EuroSAT chips per class, top half of Sen1Floods11, 2 seeds",
    )  # fmt: skip
    g.add_argument(
        "--dev", action="store_true",
        help="score the dev protocols only (training/validation data: EuroSAT ids 1-5, reBEN "
        "train -> validation, Sen1Floods11 inside the left half, Presto inside its 70 %% "
        "part; Salinas-A skipped): for choosing a recipe without touching the test parts",
    )  # fmt: skip
    g.add_argument("--batch", type=int, default=16, help="chips per forward pass (16)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (auto)")


def run_real(args) -> int:
    """Handler of ``rsfm eval --real``."""
    import logging
    import shlex

    from .run import EvalSettings, build_kinds, default_data_root, run, summary_table, write

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tasks = TASK_NAMES if args.tasks == "all" else tuple(t.strip() for t in args.tasks.split(","))
    unknown = sorted(set(tasks) - set(TASK_NAMES))
    if unknown:
        print(f"rsfm eval --real: unknown tasks {unknown}; choose from {', '.join(TASK_NAMES)}",
              file=sys.stderr)  # fmt: skip
        return 2
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    if seeds < 1:
        print("rsfm eval --real: --seeds must be >= 1", file=sys.stderr)
        return 2
    settings = EvalSettings(
        data=str(args.data or default_data_root()), tasks=tasks, seeds=seeds, quick=args.quick,
        dev=args.dev,
        batch=args.batch, command=shlex.join(sys.argv),
    )  # fmt: skip
    kinds = build_kinds(
        [*args.checkpoint, *args.models], args.random, args.random_seed, args.device
    )
    report = run(settings, kinds, say=lambda s: print(s, flush=True))
    print()
    print(summary_table(report))
    if args.out:
        js, md = write(report, args.out)
        print(f"\nwrote {js} and {md}")
    return 0
