#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then runs unit and
# end-to-end tests against real containerd, dockerd and sshd. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root, or with sudo (it installs system packages and starts real daemons)" >&2; exit 1; }
bash scripts/setup.sh
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@" tests
