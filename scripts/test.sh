#!/usr/bin/env bash
# The README's test command: set up .venv if needed, then run the CPU test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k sensors`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
exec python -m pytest -q "$@"
