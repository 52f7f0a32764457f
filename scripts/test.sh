#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite.
# Installs: a virtualenv (.venv) with car + test tools, Debian's chromium (browser tests),
# and the pinned Codex CLI from the npm registry (tests/codex, end-to-end tests).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
.venv/bin/python -m pip install --quiet -e ".[test]"

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [ ! -x tests/codex/node_modules/.bin/codex ]; then
  # never --omit=optional: the native codex binary is an optional dependency
  (cd tests/codex && npm install --no-audit --no-fund --loglevel=error)
fi

.venv/bin/ruff check car tests bench build.py
exec .venv/bin/python -m pytest "$@"
