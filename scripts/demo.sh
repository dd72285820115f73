#!/usr/bin/env bash
# The README's demo command: set up .venv if needed, then run the end-to-end demo on an
# embedded default (a synthetic scene). Output goes to demo_out/ unless RSFM_DEMO_OUT is set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
exec rsfm demo --out "${RSFM_DEMO_OUT:-$root/demo_out}" "$@"
