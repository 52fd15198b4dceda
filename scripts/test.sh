#!/usr/bin/env bash
# The whole test suite, from nothing: setup, lint, types, unit + integration + end-to-end tests.
# Tests start their own Kafka broker and Redis on free loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
printf '\033[1m==> ruff\033[0m\n'
.venv/bin/ruff check streams api tests benchmarks
printf '\033[1m==> mypy --strict\033[0m\n'
.venv/bin/mypy
printf '\033[1m==> pytest\033[0m\n'
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
