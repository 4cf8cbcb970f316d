#!/usr/bin/env bash
# The one command that starts crmbridge on this machine: builds the binary
# (release) and runs `crmbridge serve` with the data in ./.crmbridge.
# Extra arguments go to `crmbridge serve` (e.g. --port 9090).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --locked --bin crmbridge
exec "$ROOT/target/release/crmbridge" serve "$@"
