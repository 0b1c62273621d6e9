#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine, then runs the whole suite.
# Test tools come from requirements-test.txt; the end-to-end tests drive Debian's Chromium
# (/usr/bin/chromium) through the playwright package, so Chromium is installed with apt-get
# when it is missing (needs root or sudo). Extra arguments go to pytest (`-n 0` runs in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
# One pytest-xdist worker per core, each test file on one worker (module fixtures built once; each worker
# that runs end-to-end tests starts its own Streamlit server).
python3 -m pytest -n auto --dist loadfile "$@"
