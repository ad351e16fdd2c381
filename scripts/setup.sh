#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine (as root) for pussh development: system packages
# (Docker 26, containerd 1.7, OpenSSH, skopeo, ...) and the Python virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root, or with sudo (it installs system packages)" >&2; exit 1; }
bash scripts/install-system.sh
PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "setup.sh: Python >= 3.11 is needed (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
# Byte-compiled as `pip install` of a wheel would leave them (an editable install does not, and
# with PYTHONDONTWRITEBYTECODE set nothing ever writes them): each start would otherwise compile
# the client's ~50 modules from source, ~60 ms (measured).
PYTHONDONTWRITEBYTECODE= .venv/bin/python -m compileall -q pussh ctrd oci proto registry >/dev/null
