#!/usr/bin/env bash
# One command on a fresh Linux machine (root): install everything, then push an image to a
# throwaway local server over SSH and run it there (see scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root, or with sudo (it installs system packages and starts daemons)" >&2; exit 1; }
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py
