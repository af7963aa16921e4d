#!/usr/bin/env bash
# Download the wheels a GPU machine without network access needs, into an ignored folder that travels with `carry`.
#
# The device image (KINDS.md) has PyTorch, NumPy, Pillow, PyYAML, safetensors and tqdm; training also imports
# pytorch-msssim, and the model package imports pillow-heif (which needs Pillow >= 11.1, so Pillow comes too,
# in case the image's is older). The service and its tests (scripts/gpu_check.sh) need FastAPI, uvicorn, pydantic
# and what they pull in beyond the image's packages (anyio and typing-extensions too: theirs may be older).
# Versions are the ones this checkout's .venv has, for CPython 3.12 on x86-64 manylinux (the machine's python3).
# Extra names (NAME==VERSION) may follow the folder.
#
#   bash scripts/pack_wheels.sh [DIR [NAME==VERSION ...]]      # DIR defaults to .carry/wheels
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-.carry/wheels}
shift || true
py=.venv/bin/python
[[ -x $py ]] || { echo "pack_wheels: $py is missing; run scripts/setup.sh dev first" >&2; exit 1; }

version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))"; }
names=("pytorch-msssim==$(version pytorch-msssim)" "pillow-heif==$(version pillow-heif)" "pillow==$(version pillow)")
for name in fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv uvicorn python-multipart \
    annotated-types typing-inspection redis fastapi-offline typing-extensions anyio httpx2 httpcore2 truststore; do
    names+=("$name==$(version "$name")")
done
names+=("$@")

rm -rf "$dir"
mkdir -p "$dir"
echo "pack_wheels: downloading ${names[*]} into $dir (CPython 3.12, manylinux x86-64)"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dir" "${names[@]}"
du -sh "$dir"
