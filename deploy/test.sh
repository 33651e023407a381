#!/usr/bin/env bash
# The test command: starts RabbitMQ and PostgreSQL if needed, then runs every test of
# the workspace against them (each test makes its own vhost and database); the console's
# tests drive Debian's Chromium, installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh --browser
cargo test --workspace --locked "$@"
