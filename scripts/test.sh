#!/usr/bin/env bash
# The test suite, from nothing: setup, lint, types, unit + integration + end-to-end tests.
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh --quick    the edit loop: lint, types, unit tests and one smoke integration test
# Any other arguments go to pytest (e.g. `scripts/test.sh tests/integration/test_api.py -x`).
# Tests start their own Kafka broker and Redis on free loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
scripts/setup.sh

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
static_log=$(mktemp)
trap 'rm -f "$static_log"' EXIT

# ruff and mypy need one core for seconds: they run alongside pytest, and either failing fails
# the run. Their output is printed once pytest is done.
say "ruff and mypy --strict (in the background)"
( .venv/bin/ruff check streams api tests benchmarks && .venv/bin/mypy ) >"$static_log" 2>&1 &
static_pid=$!

args=(-p no:cacheprovider --durations=25 --durations-min=1)
if [ "$quick" = 1 ]; then
  say "pytest (quick: unit tests and the stream-core smoke test)"
  args+=(tests/unit tests/integration/test_stream_core.py)
else
  say "pytest"
fi
set +e
.venv/bin/python -m pytest "${args[@]}" "$@"
rc=$?
wait "$static_pid"
static_rc=$?
set -e

say "ruff and mypy --strict"
cat "$static_log"
if [ "$static_rc" != 0 ]; then
  echo "ruff or mypy failed (exit $static_rc)" >&2
fi
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  rc=1
fi
if [ "$rc" = 0 ] && [ "$static_rc" != 0 ]; then
  rc=$static_rc
fi
exit "$rc"
