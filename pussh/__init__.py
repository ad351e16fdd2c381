"""pussh: push a local image into a server's Docker image store over SSH, sending only missing blobs."""

# Kept equal to pyproject's version by tests/unit/test_pussh_cli.py; a constant because asking
# importlib.metadata costs ~40 ms of every start (measured), more than anything else it would do.
__version__ = "0.1.0"

# The paths into a server (--via); light here so that the CLI need not import the push machinery.
VIAS = ("auto", "containerd", "registry", "load")
