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

pytest_=(.venv/bin/python -m pytest -p no:cacheprovider --durations=25 --durations-min=1)
unit_rc=0
set +e
if [ "$quick" = 1 ]; then
  say "pytest (quick: unit tests and the stream-core smoke test)"
  "${pytest_[@]}" tests/unit tests/integration/test_stream_core.py "$@"
  rc=$?
elif [ "$#" = 0 ]; then
  # The unit tests need a core and no time window; the integration and end-to-end tests mostly
  # wait on workers and brokers. The unit tests run beside them, niced so that they yield.
  say "pytest: unit tests (in the background) and integration + end-to-end tests"
  unit_log=$(mktemp)
  trap 'rm -f "$static_log" "$unit_log"' EXIT
  nice -n 10 "${pytest_[@]}" tests/unit >"$unit_log" 2>&1 &
  unit_pid=$!
  "${pytest_[@]}" tests/integration tests/e2e
  rc=$?
  wait "$unit_pid"
  unit_rc=$?
  say "pytest: unit tests"
  cat "$unit_log"
else
  say "pytest"
  "${pytest_[@]}" "$@"
  rc=$?
fi
wait "$static_pid"
static_rc=$?
set -e

say "ruff and mypy --strict"
cat "$static_log"
for name in rc unit_rc; do
  if [ "${!name}" = 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    printf -v "$name" 1
  fi
done
if [ "$static_rc" != 0 ]; then
  echo "ruff or mypy failed (exit $static_rc)" >&2
fi
if [ "$unit_rc" != 0 ]; then
  echo "the unit tests failed (exit $unit_rc)" >&2
fi
for code in "$rc" "$unit_rc" "$static_rc"; do
  if [ "$code" != 0 ]; then
    exit "$code"
  fi
done
exit 0
