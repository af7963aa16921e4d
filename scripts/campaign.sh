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
  grep '"loss"' "$metrics" | tail -1
  grep '"dev' "$metrics" | tail -1 || true
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
