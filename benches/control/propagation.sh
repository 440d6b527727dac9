#!/usr/bin/env bash
# Propagation delay of the shared control plane: two `portcullis serve` processes on one
# PostgreSQL (started by the test), a token disabled/enabled 1,000 times through gateway
# A's admin API, each change timed from A's acknowledgement until gateway B answers
# differently (B asked every millisecond). Prints p50/p99/max.
#   benches/control/propagation.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo test --workspace --locked "$@" --test cluster_control -- \
    --ignored --nocapture propagation_delay_over_1000_changes
