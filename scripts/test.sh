#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs, then runs unit and
# end-to-end tests against real containerd, dockerd and sshd. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@" tests
