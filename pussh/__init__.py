"""pussh: push a local image into a server's Docker image store over SSH, sending only missing blobs."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("pussh")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
