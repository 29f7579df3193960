#!/usr/bin/env bash
# Puts the official JSON Schema of AsyncAPI 3.0.0 at $1 (from the npm package @asyncapi/specs,
# the AsyncAPI initiative's own), for the tests that validate generated documents against it.
# Fetched once; the tests themselves use no network.
set -euo pipefail
DEST="$1"
VERSION="6.11.1"
if [ -s "$DEST" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "npm is missing and apt-get is not available: install npm (Node.js)" >&2
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "@asyncapi/specs@$VERSION" >/dev/null && tar xzf asyncapi-specs-*.tgz)
mkdir -p "$(dirname "$DEST")"
cp "$WORK/package/schemas/3.0.0-without-\$id.json" "$DEST"
