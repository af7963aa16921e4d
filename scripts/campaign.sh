#!/usr/bin/env bash
# The CPU restoration campaign in the background: resumes the run if its checkpoint exists, else starts it from
# a copy of the shipped bundle. One core at nice 19; the run lives outside the work tree so that it survives a
# fresh checkout (KIND_CAMPAIGN_DIR, default ~/kind-campaign). Extra arguments go to `kind train` (-o key=value).
#   bash scripts/campaign.sh            # start or resume, detached; log in $KIND_CAMPAIGN_DIR/train.log
#   bash scripts/campaign.sh --status   # steps done, speed, latest dev check
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${KIND_CAMPAIGN_DIR:-$HOME/kind-campaign}"
metrics="$dir/run/restore/metrics.jsonl"
if [ "${1:-}" = --status ]; then
  pgrep -f "kind train restore --config configs/campaign.yaml" >/dev/null && echo "running" || echo "not running"
  [ -f "$metrics" ] || { echo "no run in $dir yet"; exit 0; }
  # the docs/training.md campaign table: samples and pixels seen against the paper's restoration schedule
  # (1000 epochs of 4 × 384² crops over SICE's 471 training pairs: 471,000 samples, 6.9e10 pixels)
  .venv/bin/python - "$metrics" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
batch, patch = 2, 256  # configs/campaign.yaml
paper = 471_000 * 384**2
last = max((r for r in rows if "loss" in r), key=lambda r: r["step"], default=None)
if last:
    step = last["step"]
    print(f"step {step}: {step * batch:,} samples, {step * batch * patch**2:.3g} px = "
          f"{100 * step * batch * patch**2 / paper:.2f} % of the paper's; last loss {last['loss']}")
for r in rows:
    if "eval" in r:
        print(f"dev check at step {r['step']}: " + json.dumps(r["eval"]))
PY
  exit 0
fi
if pgrep -f "kind train restore --config configs/campaign.yaml" >/dev/null; then
  echo "scripts/campaign.sh: already running (log: $dir/train.log)"
  exit 0
fi
mkdir -p "$dir"
# the bundle the run started from, kept with it: the shipped one may be replaced while the run goes on
[ -f "$dir/init/manifest.json" ] || cp -r checkpoints/kind-sice "$dir/init"
resume=()
[ -f "$dir/run/restore/checkpoint.pt" ] && resume=(--resume)
echo "scripts/campaign.sh: ${resume[*]:-start} in $dir/run (log: $dir/train.log)"
nohup nice -n 19 .venv/bin/kind train restore --config configs/campaign.yaml "${resume[@]}" \
  -o "out=$dir/run" -o "init=$dir/init" "$@" >>"$dir/train.log" 2>&1 &
