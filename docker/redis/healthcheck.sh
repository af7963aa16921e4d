#!/bin/sh
# Healthy when the service's Redis user can authenticate and PING (redis-cli exits 0 even on an error reply).
# Port: REDIS_PORT (default 6379); password file and user as in start-redis.sh.
set -eu
REDISCLI_AUTH=$(cat "${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}")
export REDISCLI_AUTH
reply=$(redis-cli --no-auth-warning --user "${REDIS_USER:-kind}" -p "${REDIS_PORT:-6379}" ping)
[ "$reply" = PONG ]
