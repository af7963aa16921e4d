#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU (≤ 8 minutes): the `gpu` tests (the CUDA worker path),
# fp32/fp16/bf16 latency, throughput and peak GPU memory at batch 1 and 8 on 600×400 and on a 12 MP photo
# (tests/benchmarks/bench_gpu.py), and `kind serve` throughput against in-process on the GPU with 600×400
# uploads (tests/benchmarks/bench_service.py --saturation-only). JSON results go to OUTDIR.
#
#   bash scripts/pack_wheels.sh               # here, with network: the service's wheels into .carry/wheels
#   bash scripts/gpu_check.sh OUTDIR          # there; carry .carry (the GPU machine has no network)
#
# Without a GPU it says so and runs what the CPU can (the tests skip, the benchmarks run small), as a rehearsal.
# Each step has its own time limit; a failed step is recorded in OUTDIR/summary.json and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
py=${KIND_PYTHON:-python3}
[[ -x .venv/bin/python && -z ${KIND_PYTHON:-} ]] && py=.venv/bin/python  # a dev checkout; the GPU image has python3
say() { echo "gpu_check: $*" >&2; }
# kind_cli from this folder, kind_serve.* through links to its model/, service/ and training/ (no install)
export PYTHONPATH="$PWD:$(bash scripts/package-path.sh)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# dependencies: the service's packages come from the carried wheels where the image lacks them
need='import fastapi, uvicorn, pydantic_settings, multipart, prometheus_client, httpx, PIL, safetensors, pillow_heif'
if ! "$py" -c "$need" 2> /dev/null; then
    wheels=${KIND_WHEELS:-.carry/wheels}
    compgen -G "$wheels/*.whl" > /dev/null ||
        { say "missing service packages and no wheels in $wheels: run 'bash scripts/pack_wheels.sh' and carry .carry"; exit 2; }
    site=$(mktemp -d /tmp/kind-site.XXXXXX)
    say "installing $(ls "$wheels" | wc -l) carried wheels into $site (no index)"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl || exit 2
    export PYTHONPATH="$site:$PYTHONPATH"
    "$py" -c "$need" || { say "still missing packages after installing the wheels"; exit 2; }
fi

if "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    device=cuda precision=fp16 quick=() iters=10
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/nvidia-smi.txt" 2>&1
else
    say "no CUDA device: a CPU rehearsal (gpu tests skip, benchmarks small)"
    device=cpu precision=fp32 quick=(--quick) iters=1
fi
"$py" -c 'import json, sys, torch; json.dump({"torch": torch.__version__, "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}, sys.stdout)' > "$out/env.json"

declare -A status
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    say "$name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    status[$name]="rc=$? seconds=$((SECONDS - start))"
    say "$name: ${status[$name]}"
}
step gpu_tests 120 "$py" -m pytest -m gpu tests/service/test_service_gpu.py -q -p no:cacheprovider \
    --junitxml "$out/gpu_tests.xml"
step model 200 "$py" tests/benchmarks/bench_gpu.py "${quick[@]}" --iters "$iters" --budget-s 150 \
    --json-out "$out/model.json"
if [[ $device == cuda ]]; then
    serve=(--uploads 600x400 --tile 768 --overlap 64 --clients 32 --max-batch-size 8 --threads 4)
else
    serve=(--uploads 96x64 --tile 128 --overlap 16 --clients 4 --max-batch-size 4 --threads 1 --limit 8)
fi
step service 150 "$py" tests/benchmarks/bench_service.py --saturation-only --device "$device" \
    --precision "$precision" "${serve[@]}" --json-out "$out/service.json"

"$py" - "$out" "${status[gpu_tests]}" "${status[model]}" "${status[service]}" << 'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {"steps": dict(zip(("gpu_tests", "model", "service"), sys.argv[2:]))}
for name in ("env", "model", "service"):
    path = out / f"{name}.json"
    summary[name] = json.loads(path.read_text()) if path.exists() else None
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary["steps"]))
EOF
