#!/bin/sh
# Starts redis-server locked down for KinD Serve; extra arguments go to redis-server (bind, dir, memory, ...).
#
# The password comes from a file (REDIS_PASSWORD_FILE, default /run/secrets/redis_password: a compose secret
# or a mounted Kubernetes Secret); without one Redis does not start. The ACL, given on stdin so that neither
# the password nor its hash shows in the process list:
#   - `default` (every unauthenticated connection) is disabled: it may run nothing, and it keeps no
#     `nopass` flag, so protected mode (on) does not refuse the service's remote connections either;
#   - the service's user (REDIS_USER, default kind) may run, on keys under `kind:` only, the image store's
#     GET, SET, DEL, PING and SELECT, and the job queue's stream and sorted-set commands (XADD, XREADGROUP,
#     XAUTOCLAIM, XCLAIM, XACK, XDEL, XPENDING, XGROUP CREATE; ZADD, ZREM, ZREMRANGEBYSCORE, ZCARD, EXPIREAT,
#     MULTI/EXEC): no KEYS or SCAN, no FLUSHALL, no CONFIG, no MODULE, no EVAL, no DEBUG.
# These are the commands service/store.py sends; a new one there needs a `+command` here.
set -eu
password_file="${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}"
user="${REDIS_USER:-kind}"
if [ ! -s "$password_file" ]; then
  echo "redis: no password in $password_file: mount the redis_password secret (docs/deploying.md)" >&2
  exit 1
fi
# the password as the service sends it: the file's content without its trailing newline
hash=$(printf '%s' "$(cat "$password_file")" | sha256sum | cut -d' ' -f1)
exec redis-server - "$@" <<ACL
user default off resetpass resetkeys resetchannels -@all
user $user on #$hash resetkeys ~kind:* resetchannels -@all +get +set +del +ping +select +xadd +xreadgroup +xautoclaim +xclaim +xack +xdel +xpending +xgroup|create +zadd +zrem +zremrangebyscore +zcard +expireat +multi +exec
ACL
