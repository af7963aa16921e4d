#!/usr/bin/env bash
# Print a folder from which `import kind_serve.model` (and .service, .training) reads this checkout's sources
# without installing it: a kind_serve/ of links to model/, service/ and training/, made once under
# ${TMPDIR:-/tmp}. For tools that cannot follow the editable install's import hook (mypy) and for machines
# that run from a bare copy of the tree (scripts/gpu_*.sh): PYTHONPATH="$(bash scripts/package-path.sh)".
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${TMPDIR:-/tmp}/kind-serve-path-$(printf '%s' "$root" | cksum | cut -d' ' -f1)"
mkdir -p "$dir/kind_serve"
for package in model service training; do
  ln -sfn "$root/$package" "$dir/kind_serve/$package"
done
echo "$dir"
