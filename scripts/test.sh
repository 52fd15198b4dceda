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

say() { printf '\033[1m==> %s\033[0m (at %ds)\n' "$*" "$SECONDS"; }
static_log=$(mktemp)
trap 'rm -f "$static_log"' EXIT

# ruff and mypy need one core for seconds: they run alongside pytest, and either failing fails
# the run. Their output is printed once pytest is done.
say "ruff and mypy --strict (in the background)"
( .venv/bin/ruff check streams api tests benchmarks && .venv/bin/mypy ) >"$static_log" 2>&1 &
static_pid=$!

pytest_=(.venv/bin/python -m pytest -p no:cacheprovider --durations=25 --durations-min=1)
side_rc=0
set +e
if [ "$quick" = 1 ]; then
  say "pytest (quick: unit tests and the stream-core smoke test)"
  "${pytest_[@]}" tests/unit tests/integration/test_stream_core.py "$@"
  rc=$?
elif [ "$#" = 0 ]; then
  # Two lanes. The timed integration tests (fault schedules, session timeouts, deadlines) run
  # at normal priority; beside them, niced so that they yield the cores, what has no timing
  # window: the end-to-end tests (light, but with generous waits: nice 5), then the unit tests
  # and the tests marked `untimed` (CPU-bound, no window: nice 10).
  say "pytest: timed integration tests; beside them (niced) end-to-end, unit and untimed tests"
  side_log=$(mktemp)
  trap 'rm -f "$static_log" "$side_log"' EXIT
  (
    nice -n 5 "${pytest_[@]}" tests/e2e -m "not untimed"
    e2e_rc=$?
    nice -n 10 "${pytest_[@]}" tests/unit tests/e2e tests/integration \
      -m "(not integration and not e2e) or untimed"
    cpu_rc=$?
    if [ "$e2e_rc" != 0 ]; then exit "$e2e_rc"; fi
    exit "$cpu_rc"
  ) >"$side_log" 2>&1 &
  side_pid=$!
  "${pytest_[@]}" tests/integration -m "not untimed"
  rc=$?
  wait "$side_pid"
  side_rc=$?
  say "pytest: end-to-end, unit and untimed integration tests (ran beside)"
  cat "$side_log"
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
for name in rc side_rc; do
  if [ "${!name}" = 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    printf -v "$name" 1
  fi
done
if [ "$static_rc" != 0 ]; then
  echo "ruff or mypy failed (exit $static_rc)" >&2
fi
if [ "$side_rc" != 0 ]; then
  echo "the tests run beside failed (exit $side_rc)" >&2
fi
for code in "$rc" "$side_rc" "$static_rc"; do
  if [ "$code" != 0 ]; then
    exit "$code"
  fi
done
exit 0
