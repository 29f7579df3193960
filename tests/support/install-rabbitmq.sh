#!/usr/bin/env bash
# Installs RabbitMQ (Debian's rabbitmq-server, with Erlang) where it is missing, for the
# RabbitMQ tests. The tests start nodes of their own on free ports (tests/support/
# rabbitmq_server.py); the system service is neither used nor started here.
set -euo pipefail
if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && command -v epmd >/dev/null 2>&1; then
  exit 0
fi
bash "$(dirname "$0")/apt-install-server.sh" rabbitmq-server RabbitMQ
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && command -v epmd >/dev/null 2>&1
