"""Benchmarks: pussh against docker save|ssh|load and the registry path, on the real test bed.
Entry point: `python -m benchmarks.run` (see its docstring); results: benchmarks/RESULTS.md."""
