#!/usr/bin/env bash
# apt-install-server.sh PACKAGE DESCRIPTION: installs a server's Debian package for the
# tests (tests/support/install-*.sh call it once they found it missing), without letting
# the package start its system service: the tests start servers of their own on free
# ports, and the system service is neither used nor started here.
set -euo pipefail
package="$1"
description="$2"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$package is missing and apt-get is not available: install $description" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
# Keep the package from starting the system service while it installs (policy-rc.d's
# "101: action forbidden"), unless the machine already has a policy of its own.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=""
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  OWN_POLICY=1
fi
cleanup() { if [ -n "$OWN_POLICY" ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$package" >/dev/null
