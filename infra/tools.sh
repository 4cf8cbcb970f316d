#!/usr/bin/env bash
# Installs the Python-side tools (moto, cfn-lint, SAM CLI, cargo-lambda) into
# .tools/venv, idempotently: a second run with the same requirements is a no-op.
# Sourced by infra/test.sh and infra/serve.sh; puts the venv on PATH.
set -euo pipefail
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VENV="$ROOT/.tools/venv"
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$ROOT/infra/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "==> installing test tools into .tools/venv (moto, cfn-lint, SAM CLI, cargo-lambda)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/infra/requirements.txt"
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
