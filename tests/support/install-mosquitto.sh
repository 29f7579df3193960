#!/usr/bin/env bash
# Installs the mosquitto broker binary where it is missing (Debian/Ubuntu), for the MQTT tests.
# The tests start their own mosquitto on a free port; the system service is never used.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "mosquitto is missing and apt-get is not available: install the mosquitto broker" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
# The package may start a system service on 1883; the tests do not use it.
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
