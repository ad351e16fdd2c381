#!/bin/sh
# One command for the whole comparison (as root): benchmarks/run.sh [--quick] [any benchmarks.run option]
cd "$(dirname "$0")/.." || exit 1
exec .venv/bin/python -m benchmarks.run "$@"
