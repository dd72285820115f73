#!/usr/bin/env bash
# Create or reuse the project's virtualenv in .venv and install rsfm into it (editable).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again: it reinstalls only
# when setup.py or this file changed since the last install.
#
# torch is pinned to the CPU build 2.13.0 on this path. A GPU user creates .venv with
# their own CUDA torch first (see README); RSFM_KEEP_TORCH=1 then leaves it alone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[rsfm] creating virtualenv in $venv" >&2
  "$py" -m venv "$venv"
fi
stamp="$venv/.rsfm-installed"
want="$(cat "$root/setup.py" "$root/scripts/env.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[rsfm] installing rsfm and its dependencies into $venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip
  if [ "${RSFM_KEEP_TORCH:-0}" != "1" ]; then
    "$venv/bin/python" -m pip install -q "torch==2.13.0"
  fi
  # setuptools warns on every editable install that folders named like a package may
  # shadow it on imports: the layout is deliberate (setup.py), so the note is dropped.
  PYTHONWARNINGS="ignore:Editable installation" \
    "$venv/bin/python" -m pip install -q -e "$root[dev,train,data]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
# DeepSpeed JIT-compiles small ops on first use; keep them inside the checkout.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$root/.torch_extensions}"
