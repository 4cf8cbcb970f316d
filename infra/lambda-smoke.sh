#!/usr/bin/env bash
# Runs infra/lambda_smoke.py: every function binary under `cargo lambda watch`
# against the emulator, fed events/ samples. Called by infra/test.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --locked --bin crmbridge --bin webhook --bin chat --bin admin --bin dispatch --bin tick
exec "$ROOT/.tools/venv/bin/python" infra/lambda_smoke.py
