#!/usr/bin/env bash
# Train KinD's three stages from scratch on one NVIDIA GPU within a wall-clock budget, evaluate, export the bundle.
#
#   bash scripts/gpu_train.sh OUT_DIR           # on a machine with an NVIDIA GPU: about 9 minutes in all
#   bash scripts/gpu_train.sh OUT_DIR --tiny    # the same steps on the CPU with a tiny schedule (a few minutes)
#
# OUT_DIR (new or empty) receives bundle/ (kind export --fp16; every file <= 16 MiB), metrics.json (dev
# evaluations, clean and dark, and the schedule actually trained) and train.log. Reads the pack of
# scripts/pack_sice.py (.carry/sice-pack), not ../shared; installs pytorch-msssim and pillow-heif from the wheels
# of scripts/pack_wheels.sh (.carry/wheels) where they are missing (the GPU machine has no network).
# Each stage trains a short first leg, then resumes to the steps its share of the budget holds at the measured
# speed (scripts/gpu_plan.py), capped at the paper's schedule (configs/gpu.yaml); `timeout` guards every leg.
# Environment: KIND_BUDGET_S (whole run, default 510; --tiny 900), KIND_PACK, KIND_WHEELS, KIND_WORKERS
# (default: cores less two), KIND_PYTHON (default .venv/bin/python if present, else python3), KIND_RUN_DIR.
set -euo pipefail
[[ -n ${EPOCHREALTIME:-} ]] || { echo "gpu_train: error: needs bash 5 or later (EPOCHREALTIME)" >&2; exit 1; }

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { echo "gpu_train: $*"; }
die() {
    echo "gpu_train: error: $*" >&2
    exit 1
}
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

out="" tiny=0
for arg in "$@"; do
    case $arg in
        --tiny) tiny=1 ;;
        -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' && exit 0 ;;
        -*) die "unknown option $arg (usage: scripts/gpu_train.sh OUT_DIR [--tiny])" ;;
        *)
            [[ -z $out ]] || die "one OUT_DIR only, got '$out' and '$arg'"
            out=$arg
            ;;
    esac
done
[[ -n $out ]] || die "usage: scripts/gpu_train.sh OUT_DIR [--tiny]"
mkdir -p "$out"
out=$(cd "$out" && pwd)
[[ -z $(ls -A "$out") ]] || die "$out is not empty: give a new or empty OUT_DIR"
exec > >(tee -a "$out/train.log") 2>&1
start=$(now)
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}

py=${KIND_PYTHON:-}
[[ -n $py ]] || { [[ -x .venv/bin/python ]] && py=.venv/bin/python; } || py=python3
# kind_cli from the checkout, kind_serve.* through links to its model/, service/ and training/ (no install)
export PYTHONPATH="$repo:$(bash "$repo/scripts/package-path.sh")${PYTHONPATH:+:$PYTHONPATH}"

if ((tiny)); then
    # a functional check: the tiny caps bind, the budget only has to be loose enough for a busy CPU
    device=cpu budget=${KIND_BUDGET_S:-900} reserve=300 workers=${KIND_WORKERS:-2}
else
    command -v nvidia-smi > /dev/null || die "nvidia-smi not found: this needs a machine with an NVIDIA GPU (--tiny runs on the CPU)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || die "nvidia-smi failed: no usable NVIDIA GPU"
    device=cuda budget=${KIND_BUDGET_S:-510} reserve=100 workers=${KIND_WORKERS:-$(($(nproc) > 3 ? $(nproc) - 2 : 1))}
fi

# dependencies: whatever is missing comes from the carried wheels (no network on the GPU machine)
missing() {
    "$py" - << 'EOF'
import importlib
missing = []
for name in ("torch", "numpy", "PIL", "yaml", "safetensors", "tqdm", "pytorch_msssim", "pillow_heif"):
    try:
        importlib.import_module(name)
    except Exception:
        missing.append(name)
if "PIL" not in missing:
    import PIL
    if tuple(int(p) for p in PIL.__version__.split(".")[:2]) < (11, 3):
        missing.append(f"pillow>=11.3 (have {PIL.__version__})")
print(" ".join(missing))
EOF
}
lacking=$(missing)
if [[ -n $lacking ]]; then
    wheels=${KIND_WHEELS:-.carry/wheels}
    # training's wheels only: the folder may also hold the service's (scripts/gpu_check.sh), which need not shadow
    # the image's packages here
    mapfile -t picked < <(compgen -G "$wheels/pytorch_msssim-*.whl"; compgen -G "$wheels/pillow_heif-*.whl"; compgen -G "$wheels/pillow-*.whl")
    ((${#picked[@]})) ||
        die "$py lacks: $lacking; and $wheels holds none of its wheels (run 'bash scripts/pack_wheels.sh' here and carry .carry)"
    site=$(mktemp -d /tmp/kind-site.XXXXXX)
    say "$py lacks: $lacking; installing ${picked[*]} into $site (no index)"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${picked[@]}"
    export PYTHONPATH="$site:$PYTHONPATH"
    lacking=$(missing)
    [[ -z $lacking ]] || die "still missing after installing $wheels: $lacking"
fi
if ((!tiny)); then
    "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
        die "PyTorch ($("$py" -c 'import torch; print(torch.__version__)')) sees no CUDA device"
fi
"$py" -c 'import torch; print("gpu_train: torch", torch.__version__, "on", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'

pack=${KIND_PACK:-.carry/sice-pack}
[[ -f $pack/scenes.csv && -f $pack/alignment.csv ]] ||
    die "$pack holds no packed SICE set: build it here with '.venv/bin/python scripts/pack_sice.py --config configs/gpu.yaml' and carry .carry"
# DataLoader workers hand batches over in shared memory: up to 2 restoration batches (56 MB each) per worker
shm_mb=$(df -m --output=avail /dev/shm 2> /dev/null | tail -1 | tr -d ' ' || echo 0)
if [[ $shm_mb =~ ^[0-9]+$ ]] && ((shm_mb < workers * 2 * 60 * 2)); then
    fit=$((shm_mb / 240 > 1 ? shm_mb / 240 : 1))
    say "warning: /dev/shm has ${shm_mb} MB free, too little for $workers workers; using $fit"
    workers=$fit
fi
run=${KIND_RUN_DIR:-}
[[ -n $run ]] || { run=$(mktemp -d /tmp/kind-gpu-run.XXXXXX) && own_run=1; }
config=configs/gpu.yaml
sets=("data=$pack" "out=$run" "device=$device" "workers=$workers")
declare -A first=([decom]=200 [adjust]=200 [restore]=60) share=([decom]=25 [adjust]=20 [restore]=100)
if ((tiny)); then
    first=([decom]=3 [adjust]=3 [restore]=3)
    sets+=(threads=1 log_every=1 checkpoint_every=2 eval_pairs=2 eval_size=64 illumination_prior_steps=4)
    for stage in decom adjust restore; do sets+=("stages.$stage.steps=8" "stages.$stage.batch_size=4"); done
    sets+=(stages.restore.batch_size=2 stages.restore.patch_size=96)
fi
opts=()
for s in "${sets[@]}"; do opts+=(-o "$s"); done
train_end=$(awk -v s="$start" -v b="$budget" -v r="$reserve" 'BEGIN { printf "%.1f", s + b - r }')
left() { awk -v e="$1" -v n="$(now)" 'BEGIN { printf "%d", e - n }'; } # whole seconds until epoch time $1
say "run $run, pack $pack, $workers data workers, budget ${budget}s (training until $(left "$train_end")s from now)"

# one leg of kind train under `timeout`; a leg the guard stops keeps the stage's latest checkpoint as its weights
leg() {
    local stage=$1 guard=$2 rc=0
    shift 2
    ((guard > 10)) || guard=10
    timeout --kill-after=15 "$guard" "$py" -m kind_cli train "$stage" --config "$config" "${opts[@]}" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then
        [[ -f $run/$stage/checkpoint.pt ]] || die "$stage: stopped by the time guard (${guard}s) before its first checkpoint"
        say "$stage: stopped by the time guard (${guard}s); its latest checkpoint becomes its weights"
        "$py" -m kind_cli train "$stage" --resume --config "$config" "${opts[@]}" -o "stages.$stage.steps=1"
    elif ((rc != 0)); then
        die "$stage: kind train failed (exit $rc)"
    fi
}

declare -A took
train_stage() {
    local stage=$1 budget t0 seconds cap total
    budget=$(($(left "$train_end") * ${share[$stage]} / 100))
    t0=$(now)
    say "$stage: first leg, ${first[$stage]} steps, to measure the speed (stage budget ${budget}s)"
    # the lr halves at 80 % of the final length, not of the first leg's
    leg "$stage" $(($(left "$train_end") + 20)) -o "stages.$stage.steps=${first[$stage]}" -o "stages.$stage.lr_decay_at=1.0"
    seconds=$(elapsed "$t0")
    cap=$("$py" -c 'import sys; from kind_serve.training.config import load_config
print(load_config(sys.argv[1], sys.argv[3:]).stages[sys.argv[2]].steps)' "$config" "$stage" "${sets[@]}")
    total=$("$py" scripts/gpu_plan.py steps "$run/$stage/metrics.jsonl" --done "${first[$stage]}" \
        --leg-seconds "$seconds" --budget "$budget" --cap "$cap")
    if ((total > ${first[$stage]})); then
        local guard=$((budget + 20 - ${seconds%.*}))
        ((guard < $(left "$train_end") + 20)) || guard=$(($(left "$train_end") + 20))
        say "$stage: first leg took ${seconds}s; resuming to $total of $cap steps (time guard ${guard}s)"
        leg "$stage" "$guard" --resume -o "stages.$stage.steps=$total"
    else
        say "$stage: first leg took ${seconds}s; no time for more ($total of $cap steps)"
    fi
    took[$stage]=$(elapsed "$t0")
}
for stage in decom adjust restore; do train_stage "$stage"; done

version="kind-gpu-$(date -u +%Y%m%d-%H%M)"
"$py" -m kind_cli export "$run" --out "$run/bundle" --fp16 --version "$version"
evals=() pids=()
eval_args=(--checkpoint "$run/bundle" --data "$pack" --config "$config" --device "$device")
dark_size=256 clean_size=()
((tiny)) && eval_args+=(--pairs 2) && dark_size=64 && clean_size=(--size 64)
deadline=$(awk -v s="$start" -v b="$budget" 'BEGIN { printf "%.1f", s + b - 15 }')
guard=$(left "$deadline")
((guard > 60)) || guard=60 # the budget leaves 90 s of the device tool's 600 s; a bundle without metrics is worth less
for job in paper photo dark_paper dark_photo; do
    mode=${job#dark_}
    extra=("${clean_size[@]}")
    [[ $job == dark_* ]] && extra=(--dark --size "$dark_size")
    # four evaluations share the CPU cores for decoding, noise and SSIM
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} timeout --kill-after=10 "$guard" \
        "$py" -m kind_cli eval "${eval_args[@]}" --mode "$mode" "${extra[@]}" \
        --json "$run/eval_$job.json" > "$run/eval_$job.txt" 2>&1 &
    pids+=($!)
    evals+=("$job")
done
reports=() failed=""
for i in "${!pids[@]}"; do
    job=${evals[$i]}
    if wait "${pids[$i]}"; then
        cat "$run/eval_$job.txt"
        reports+=(--eval "dev_$job=$run/eval_$job.json")
    else
        tail -5 "$run/eval_$job.txt" >&2
        say "warning: the $job evaluation failed or ran out of time (above); metrics.json leaves it out"
        failed+=" $job"
    fi
done

seconds=()
for stage in decom adjust restore; do seconds+=(--seconds "$stage=${took[$stage]}"); done
"$py" scripts/gpu_plan.py report --config "$config" "${opts[@]}" --run "$run" "${seconds[@]}" "${reports[@]}" \
    --protocol "scripts/gpu_train.sh$( ((tiny)) && echo ' --tiny'): kind eval on the packed dev split (53 pairs unless --tiny), clean at full size, --dark at ${dark_size}px; paper/photo mode, automatic α" \
    --out "$out/metrics.json"
"$py" -m kind_cli export "$run" --out "$out/bundle" --fp16 --version "$version" --metrics "$out/metrics.json"
for f in "$out"/bundle/*; do
    size=$(stat -c %s "$f")
    ((size <= 16 * 1024 * 1024)) || die "$f is $size bytes, over 16 MiB"
done
"$py" -c 'import sys; from kind_serve.model import KinD; k = KinD.load(sys.argv[1]); print("gpu_train: bundle", k.version, "loads")' "$out/bundle"
[[ -z $failed ]] || die "the bundle is exported, but these evaluations failed:$failed (run kept in $run)"
[[ -z ${own_run:-} ]] || rm -rf "$run" # checkpoints and samples; KIND_RUN_DIR keeps them
say "done in $(elapsed "$start")s: $out/bundle, $out/metrics.json"
