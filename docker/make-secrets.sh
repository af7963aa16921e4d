#!/bin/sh
# Writes the compose stack's secrets, one random value per file, to DIR (default docker/secrets; compose reads
# KIND_SECRETS_DIR): auth_tokens (the bearer token clients send), redis_password, store_key (signs stored
# entries). Existing files are kept, so rerunning never locks clients out; delete a file to rotate it.
# The directory is private to you (0700); the files are 0644 because compose mounts them into containers that
# run as other users (10001 and 990), and the directory above them stays closed.
#
# usage: docker/make-secrets.sh [DIR]
set -eu
dir="${1:-$(dirname "$0")/secrets}"
mkdir -p "$dir"
chmod 0700 "$dir"
for name in auth_tokens redis_password store_key; do
  file="$dir/$name"
  if [ -s "$file" ]; then
    echo "kept    $file"
    continue
  fi
  (umask 022 && python3 -c "import secrets; print(secrets.token_urlsafe(32))" >"$file.tmp")
  mv "$file.tmp" "$file"
  echo "created $file"
done
