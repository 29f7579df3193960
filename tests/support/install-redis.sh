#!/usr/bin/env bash
# Installs Redis (Debian's redis-server) where it is missing, for the Redis tests. The
# tests start servers of their own on free ports (tests/support/redis_server.py); the
# system service is neither used nor started here.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
bash "$(dirname "$0")/apt-install-server.sh" redis-server Redis
command -v redis-server >/dev/null 2>&1
