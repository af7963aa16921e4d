#!/usr/bin/env bash
# Set up .venv (serve extra) and serve the shipped checkpoint on http://127.0.0.1:8000.
# Uses every CUDA device when there is one, else the CPU. Extra arguments go to `kind serve`
# (e.g. --port 9000, --device cpu); KIND_* environment variables set the other options (docs/service.md).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "scripts/serve.sh: setting up .venv with the serve extra (scripts/setup.sh serve; ~1.5 GB the first time)"
bash scripts/setup.sh serve
exec .venv/bin/kind serve --host 127.0.0.1 --port 8000 "$@"
