#!/usr/bin/env bash
# Create (or reuse) the CPU venv that runs SGLang 0.5.16 end to end, and install AsymCache into it.
# Usage: scripts/setup_env.sh [VENV_DIR]   (default: .venv in the repo root)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-${ASYMCACHE_VENV:-$ROOT/.venv}}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
STAMP="$VENV/.asymcache-setup-$(sha256sum "$ROOT/scripts/requirements-cpu.txt" | cut -c1-16)"

if [ ! -f "$STAMP" ]; then
  "${PIP[@]}" --upgrade pip
  # torch first: the CUDA build from this machine's disk imports fine without a GPU, and torchvision
  # must match it (sglang imports torchvision.io at import time).
  "${PIP[@]}" torch==2.14.1 torchvision==0.29.1
  # sglang itself without its GPU stack (flashinfer, sglang-kernel, torch 2.11 CUDA, ...).
  "${PIP[@]}" --no-deps sglang==0.5.16
  "${PIP[@]}" -r "$ROOT/scripts/requirements-cpu.txt"
  touch "$STAMP"
fi
"${PIP[@]}" --no-deps -e "$ROOT"
echo "venv ready: $VENV"
