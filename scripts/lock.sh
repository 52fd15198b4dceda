#!/usr/bin/env bash
# Regenerates the lock files from pyproject.toml (needs PyPI): requirements.lock, what the
# worker image installs, and requirements-dev.lock, what scripts/setup.sh installs (the
# dependencies and the dev tools); exact versions with hashes, for any platform (uv --universal).
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/python" -m pip install -q uv
lock() {
  "$tools/bin/uv" pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
    --custom-compile-command scripts/lock.sh -q "$@"
}
lock -o requirements.lock
lock --extra dev -o requirements-dev.lock
