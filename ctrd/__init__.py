"""A small typed async client for containerd's gRPC API (content, images, leases, snapshots, diff), on grpclib."""
from .client import DEFAULT_NAMESPACE, DEFAULT_SOCKET, Containerd, Plugin
from .errors import AlreadyExists, ContainerdError, FailedPrecondition, InvalidArgument, Locked, NotFound, Unavailable
from .snapshots import Mount, SnapshotInfo
from .types import Descriptor, Image, Info, IngestStatus, Lease

__all__ = [
    "Containerd", "DEFAULT_NAMESPACE", "DEFAULT_SOCKET",
    "ContainerdError", "NotFound", "AlreadyExists", "Unavailable", "Locked", "FailedPrecondition", "InvalidArgument",
    "Descriptor", "Image", "Info", "IngestStatus", "Lease", "Mount", "Plugin", "SnapshotInfo",
]
