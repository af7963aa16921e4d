#!/usr/bin/env bash
# Set up .venv (serve extra) and serve the shipped checkpoint on http://127.0.0.1:8000.
# Uses every CUDA device when there is one, else the CPU. Extra arguments go to `kind serve`
# (e.g. --port 9000, --device cpu); KIND_* environment variables set the other options (README, "Service").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh serve
exec .venv/bin/kind serve --checkpoint checkpoints/kind-sice --host 127.0.0.1 --port 8000 "$@"
