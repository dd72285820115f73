"""``python -m rsfm_kernels.info``: every kernel backend, available here or why not."""

from __future__ import annotations

import sys

import rsfm_kernels  # noqa: F401  (imports register every op's backends)
from rsfm_kernels import dispatch


def report() -> str:
    lines = []
    for row in dispatch.describe():
        state = "available" if row["available"] else "unavailable: " + "; ".join(row["reasons"])
        lines.append(f"{row['op']:<16} {row['backend']:<13} {state}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
