#!/usr/bin/env bash
# Installs what the mdns tests need where it is missing (Debian/Ubuntu): iproute2's ip, to
# build hosts out of network namespaces, and a Go toolchain, to check go-micro's TXT records
# against Go's own encoding/json and compress/zlib. Nothing is downloaded but these packages.
set -euo pipefail
missing=()
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
command -v go >/dev/null 2>&1 || [ -x /usr/bin/go ] || [ -x /usr/lib/go/bin/go ] || missing+=(golang-go)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing ${missing[*]} and apt-get is not available: install them" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
