#!/usr/bin/env bash
# Installs everything segment-stream needs on a fresh Debian machine, idempotently:
# redis-server and chromium (Debian packages), a virtualenv in .venv with the project and its
# dev tools (the exact versions of requirements-dev.lock, checked against their hashes),
# and the Apache Kafka broker's jars (resolved from Maven Central with mvn, cached).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages: redis-server (the tests' and the demo's Redis) and chromium (the live page's
# test drives it).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
  say "installing ${missing[*]} (Debian packages)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "${missing[*]} missing and I am not root: apt-get install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v java >/dev/null 2>&1 || { echo "Java 17+ is required (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
command -v mvn >/dev/null 2>&1 || { echo "Maven is required once to fetch Kafka (apt-get install maven)" >&2; exit 1; }

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml requirements-dev.lock | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  say "installing the project and its dev tools into .venv (requirements-dev.lock)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --require-hashes -r requirements-dev.lock
  # setuptools says, for any editable install of a project laid out like this one, to mind
  # folders named like its packages: information for the project's developers, not a newcomer.
  PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi

say "resolving Apache Kafka (Maven Central, cached)"
.venv/bin/segments kafka fetch
