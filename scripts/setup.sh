#!/usr/bin/env bash
# Create .venv with the project and the extras given as arguments (default: serve).
# torch is pinned to the CPU build that pip finds locally; pass TORCH_SPEC to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-serve}"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/pip install -q -e ".[${extras}]"
