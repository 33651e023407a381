#!/usr/bin/env bash
# The benchmark: starts RabbitMQ and PostgreSQL if needed, builds the release binaries
# and measures the fleet on this machine (figures printed; see docs/performance.md).
#   deploy/bench.sh            # full sizes (about ten minutes)
#   deploy/bench.sh --quick    # small sizes, a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh
cargo build --release --locked --bins
exec target/release/bench "$@"
