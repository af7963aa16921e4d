#!/usr/bin/env bash
# Set up the dev environment (system packages included) and run lint, the default test suite, then the one
# slow test CI keeps: a 12-megapixel photo through POST /enhance on the CPU.
# Side effects, each announced when it happens: as root, installs Debian's redis-server (apt-get) when it is
# missing, for the Redis store tests, and chromium, for the demo page's browser tests; creates or updates .venv (scripts/setup.sh dev, ~1.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "scripts/test.sh: installing redis-server with apt-get (the Redis store tests need it)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server missing: the Redis store tests will be skipped (run as root to install it)" >&2
  fi
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "scripts/test.sh: installing chromium with apt-get (tests/browser drive the demo page in it)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium missing: the demo page's browser tests will be skipped (run as root to install it)" >&2
  fi
fi
echo "scripts/test.sh: setting up .venv with the dev extras (scripts/setup.sh dev)"
bash scripts/setup.sh dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "scripts/test.sh: mypy type-checks model/, service/ and training/ (configured in pyproject.toml)"
MYPYPATH="$(bash scripts/package-path.sh)" .venv/bin/mypy
.venv/bin/python -m pytest "$@"
if [ "$#" = 0 ]; then
  echo "scripts/test.sh: the slow 12-megapixel photo test (a few minutes on 2 CPU cores)"
  .venv/bin/python -m pytest -m slow tests/service/test_service_large.py
fi
