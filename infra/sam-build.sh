#!/usr/bin/env bash
# `sam build` for this workspace, sharing one cargo target directory.
#
# SAM's rust-cargolambda builder runs `cargo lambda build --release` once per
# function and, by default, gives each function crate its own target
# directory: five cold release builds. It also always copies the binary
# from <CodeUri>/target/lambda/. So: build into one shared directory and
# point each <CodeUri>/target at it. Plain `sam build` works too, slower.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export ROOT
# shellcheck source=infra/tools.sh
source infra/tools.sh
export SAM_CLI_TELEMETRY=0
export CARGO_TARGET_DIR="$ROOT/target/sam"
mkdir -p "$CARGO_TARGET_DIR"
for dir in functions/webhook functions/chat functions/admin functions/dispatch functions/tick; do
  ln -sfn "$CARGO_TARGET_DIR" "$dir/target"
done
sam build "$@"
echo "==> bootstraps:"
for f in .aws-sam/build/*/bootstrap; do
  printf '%-40s %8d bytes\n' "$f" "$(stat -c %s "$f")"
done
