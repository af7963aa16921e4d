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
pip_install() {
  # pip's progress (what it collects, downloads and installs) stays on screen, since the first run takes
  # minutes; the "already satisfied" lines of a later run do not. pipefail keeps pip's own exit status.
  .venv/bin/pip install "$@" | { grep -v '^Requirement already satisfied' || true; }
}
python3 -m venv .venv
echo "scripts/setup.sh: [1/3] pip"
pip_install --upgrade pip
echo "scripts/setup.sh: [2/3] ${TORCH_SPEC:-torch==2.13.0} (the largest download, the first time)"
pip_install "${TORCH_SPEC:-torch==2.13.0}"
echo "scripts/setup.sh: [3/3] this project and its '${extras}' extra"
pip_install -e ".[${extras}]"
echo "scripts/setup.sh: .venv is ready"
