#!/usr/bin/env bash
# One command for every benchmark: builds release binaries, starts the
# emulator, runs the mapping criterion bench, cold starts, cost per event and
# the load test, and writes bench-report.md and bench-report.json.
# Arguments go to crmbridge-bench (e.g. --seconds 60 --pairs 128).
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

mkdir -p .tools/logs

# The Lambda bootstraps with the release profile (fat LTO, size-optimised),
# built apart from the `crmbridge` command line so that its extra features
# (SSO credentials for `bootstrap --aws`) are not unified into them: as
# `cargo lambda build` and `sam build` build each function.
echo "==> Lambda functions (release profile)"
cargo build --release --locked -p crmbridge-webhook -p crmbridge-chat -p crmbridge-admin \
  -p crmbridge-dispatch -p crmbridge-tick
cargo build --release --locked -p crmbridge-bench --bin hello-lambda
echo "==> crmbridge serve and the benchmark (serve profile)"
cargo build --profile serve --locked --bin crmbridge --bin crmbridge-bench

echo "==> mapping benchmark (criterion)"
cargo bench --locked -p crmbridge-mapping --bench render -- --noplot 2>&1 | tee .tools/logs/criterion.log
# criterion prints "time:   [low mid high]" with a unit; take the middle estimate in ns.
mapping_ns=$(python3 - <<'PY'
import re
text = open(".tools/logs/criterion.log").read()
m = re.findall(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", text)
if not m:
    print("")
else:
    value, unit = m[-1]
    scale = {"ps": 1e-3, "ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}[unit]
    print(float(value) * scale)
PY
)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python infra/moto_serial.py -H 127.0.0.1 -p "$port" > .tools/logs/moto-bench.log 2>&1 &
started+=($!)
deadline=$((SECONDS + 60))
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do
  [ $SECONDS -lt $deadline ] || { echo "moto did not start" >&2; exit 1; }
  sleep 0.2
done
export CRMBRIDGE_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"

machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
args=(--bin-dir target/serve --lambda-dir target/release --machine "$machine" --commit "$commit")
[ -n "$mapping_ns" ] && args+=(--mapping-ns "$mapping_ns")
target/serve/crmbridge-bench "${args[@]}" "$@"
cat bench-report.md
