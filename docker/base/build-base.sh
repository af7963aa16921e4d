#!/usr/bin/env bash
# Build the local base image (Debian bookworm minbase + python3, python3-venv, ca-certificates) without any
# container registry: mmdebstrap writes a root filesystem tarball from Debian's mirror and `docker import` turns it
# into an image. The tarball is cached under KIND_CI_CACHE keyed by this script's hash, so a rerun costs seconds.
#
# usage: docker/base/build-base.sh [TAG]      (default tag: kind-serve/base:bookworm)
# env:   DOCKER (docker CLI, default: docker), KIND_CI_CACHE (default: /var/cache/kind-ci),
#        DEBIAN_MIRROR (an apt "deb URI bookworm main" line or a mirror URI; default: mmdebstrap's own default
#        mirror plus bookworm-updates and bookworm-security)
set -euo pipefail
tag="${1:-kind-serve/base:bookworm}"
docker_cli="${DOCKER:-docker}"
cache="${KIND_CI_CACHE:-/var/cache/kind-ci}"
key="$(sha256sum <"$0" | cut -c1-16)"
tarball="$cache/base-bookworm-$key.tar"

if [ "$("$docker_cli" image inspect -f '{{index .Config.Labels "org.kind-serve.base-key"}}' "$tag" 2>/dev/null)" = "$key" ]; then
  echo "base image $tag is up to date ($key)"
  exit 0
fi

if [ ! -s "$tarball" ]; then
  command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2; exit 1; }
  mkdir -p "$cache"
  rm -f "$cache"/base-bookworm-*.tar
  # Docs, man pages and locales are dropped to keep the base small; apt lists are removed after the install.
  # shellcheck disable=SC2016 # the hook's "$1" is mmdebstrap's root directory, expanded by the hook's shell
  mmdebstrap --variant=minbase --mode=root --format=tar --quiet \
    --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tarball.part" ${DEBIAN_MIRROR:+"$DEBIAN_MIRROR"}
  mv "$tarball.part" "$tarball"
fi

"$docker_cli" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.kind-serve.base-key=$key" \
  "$tarball" "$tag" >/dev/null
echo "imported $tag from $tarball"
