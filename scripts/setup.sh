#!/usr/bin/env bash
# Create .venv with the project and the extras given as arguments (default: serve).
# torch is pinned to the CPU build that pip finds locally; pass TORCH_SPEC to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serve}"
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "scripts/setup.sh: Python >= 3.11 is needed as python3 (found: $(python3 --version 2>&1 || echo none))" >&2
  exit 1
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  echo "scripts/setup.sh: python3's venv module is missing: install it (Debian/Ubuntu: apt-get install python3-venv)" >&2
  exit 1
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/pip install -q -e ".[${extras}]"
