#!/usr/bin/env bash
# The main job, from nothing: setup, then `segments demo` (local Kafka, a worker, sample
# events, the top segments printed, GET /segments served until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/segments demo "$@"
