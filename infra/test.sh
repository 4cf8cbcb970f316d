#!/usr/bin/env bash
# The one test command: installs what the tests need, starts the emulators on
# free loopback ports, runs every test, stops what it started, and fails on
# any failure. CI runs exactly this (.ci/run).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export ROOT

# shellcheck source=infra/tools.sh
source infra/tools.sh

started=()
cleanup() {
  for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (up to a deadline) until an HTTP server answers; no fixed sleeps.
wait_http() {
  local url=$1 deadline=$((SECONDS + 60))
  until curl -s -o /dev/null "$url"; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $url" >&2; return 1; fi
    sleep 0.2
  done
}

mkdir -p .tools/logs
echo "==> starting moto server (DynamoDB, EventBridge, SQS emulator)"
MOTO_PORT=$(free_port)
# moto behind a lock: DynamoDB applies conditional writes and transactions
# atomically, and the race tests rely on it (see infra/moto_serial.py).
python infra/moto_serial.py -H 127.0.0.1 -p "$MOTO_PORT" > .tools/logs/moto.log 2>&1 &
started+=($!)
wait_http "http://127.0.0.1:$MOTO_PORT/"

export CRMBRIDGE_TEST_AWS_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
# A fresh build gains nothing from incremental state, which costs time and
# gigabytes of disk.
export CARGO_TERM_COLOR=never RUST_BACKTRACE=1 CARGO_INCREMENTAL=0

# A cold debug build of the workspace and its tests takes about 4 GB under
# the target directory. CI machines do not always have that much free disk
# (a run has died with "No space left on device" while compiling
# dependencies); when the checkout's disk is short and /dev/shm has room,
# build there instead. An explicit CARGO_TARGET_DIR always wins.
NEED_GB=6
free_gb() { df -Pk "$1" 2>/dev/null | awk 'NR==2 {print int($4 / 1048576)}'; }
echo "==> free disk: $(free_gb "$ROOT") GB beside the checkout, $(free_gb /dev/shm || echo 0) GB in /dev/shm"
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ "$(free_gb "$ROOT")" -lt "$NEED_GB" ] \
  && [ "$(free_gb /dev/shm || echo 0)" -ge $((NEED_GB + 4)) ]; then
  export CARGO_TARGET_DIR=/dev/shm/crmbridge-target
  echo "==> less than $NEED_GB GB free beside the checkout: building in $CARGO_TARGET_DIR"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

echo "==> template checks (cfn-lint, sam validate --lint)"
export SAM_CLI_TELEMETRY=0
cfn-lint template.yaml
sam validate --lint --region us-east-1 --template-file template.yaml

echo "==> cargo build (every binary: the Lambda tests run them)"
cargo build --workspace --bins --locked

echo "==> cargo test (every crate, every backend)"
cargo test --workspace --locked --no-fail-fast

echo "==> OpenAPI document (crmbridge openapi) validates"
"$CARGO_TARGET_DIR/debug/crmbridge" openapi > .tools/logs/openapi.json
openapi-spec-validator .tools/logs/openapi.json

echo "==> Lambda binaries under cargo lambda watch, fed events/ samples"
bash infra/lambda-smoke.sh

echo "==> all tests passed"
