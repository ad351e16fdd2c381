#!/usr/bin/env bash
# One command on a fresh Linux machine (root): install everything, then push an image to a
# throwaway local server over SSH and run it there (see scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py
