#!/usr/bin/env bash
# The one command that starts crmbridge on this machine: builds the binary
# (the `serve` profile: optimised, quick to build) and runs `crmbridge
# serve` with the data in ./.crmbridge.
# Extra arguments go to `crmbridge serve` (e.g. --port 9090).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --profile serve --locked --bin crmbridge
exec "${CARGO_TARGET_DIR:-$ROOT/target}/serve/crmbridge" serve "$@"
