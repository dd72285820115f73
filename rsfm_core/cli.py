"""The ``rsfm`` command. Subcommands import their modules lazily so ``rsfm --help`` is fast."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsfm", description="rsfm: multimodal remote-sensing foundation model")
    sub = p.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="versions, devices and kernel backends",
                            epilog="example: rsfm info")
    p_info.set_defaults(func=lambda a: _info(a))
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


def _info(args: argparse.Namespace) -> int:
    from rsfm_kernels.info import report
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
