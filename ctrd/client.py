"""The containerd client: one grpclib channel on the daemon's unix socket, scoped to a namespace."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel

from proto import introspection_pb2, namespaces_pb2
from proto.introspection_grpc import IntrospectionStub
from proto.namespaces_grpc import NamespacesStub
from proto.version_grpc import VersionStub

from . import errors
from .content import ContentStore
from .diff import DiffService
from .images import ImageStore
from .leases import Leases
from .snapshots import DEFAULT_SNAPSHOTTER, Snapshots
from .writer import PreEncodedCodec

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "moby"  # Docker's containerd image store keeps its images here
CONTENT_PLUGIN = "io.containerd.content.v1"
SNAPSHOTTER_PLUGIN = "io.containerd.snapshotter.v1"
CRI_PLUGIN = ("io.containerd.grpc.v1", "cri")  # (type, id): its ID is io.containerd.grpc.v1.cri


@dataclass(frozen=True)
class Plugin:
    """One row of `ctr plugins ls`; `ok` is its STATUS column (no init error)."""

    type: str
    id: str
    exports: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class Containerd:
    """Usage: `async with Containerd(path, namespace) as c: await c.content.info(dgst)`.

    Calls carry the namespace as `containerd-namespace` metadata and, where a lease is given,
    `containerd-lease` metadata, as containerd's own Go client does."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, namespace: str = DEFAULT_NAMESPACE,
                 channel: Channel | None = None) -> None:
        """`channel`: a channel of the caller's (e.g. over SSH) to a containerd that is not on this
        machine, whose content directory is then never read directly."""
        self.socket_path = socket_path
        self.namespace = namespace
        self.channel = channel or Channel(path=socket_path, codec=PreEncodedCodec())
        # The one-copy WRITE needs a codec that passes bytes through (grpclib keeps it in `_codec`).
        self.pre_encodes = isinstance(getattr(self.channel, "_codec", None), PreEncodedCodec)
        self.content = ContentStore(self)
        self.images = ImageStore(self)
        self.leases = Leases(self)
        self.diff = DiffService(self)
        self._content_root: str | None | bool = None if channel else False  # False: not looked up yet

    async def __aenter__(self) -> "Containerd":
        if not os.path.exists(self.socket_path):
            raise errors.Unavailable(f"no containerd socket at {self.socket_path}")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def metadata(self, lease: str | None = None) -> dict[str, str]:
        md = {"containerd-namespace": self.namespace}
        if lease:
            md["containerd-lease"] = lease
        return md

    def snapshots(self, snapshotter: str = DEFAULT_SNAPSHOTTER) -> Snapshots:
        return Snapshots(self, snapshotter)

    async def plugins(self, *filters: str) -> list[Plugin]:
        """containerd's loaded plugins (introspection), e.g. plugins(f"type=={SNAPSHOTTER_PLUGIN}")."""
        req = introspection_pb2.PluginsRequest(filters=list(filters))
        with errors.mapped():
            resp = await IntrospectionStub(self.channel).Plugins(req)
        return [Plugin(p.type, p.id, dict(p.exports),
                       (p.init_err.message or f"code {p.init_err.code}") if p.HasField("init_err") else "")
                for p in resp.plugins]

    async def cri_loaded(self) -> bool:
        """Whether the CRI plugin (what kubelet talks to) loaded without error."""
        kind, pid = CRI_PLUGIN
        # one filter, comma = AND (separate filters would be OR-ed)
        return any(p.ok for p in await self.plugins(f"type=={kind},id=={pid}") if (p.type, p.id) == CRI_PLUGIN)

    async def snapshotters(self) -> list[str]:
        """Names of the snapshotters that loaded without error (e.g. ["native", "overlayfs"])."""
        return [p.id for p in await self.plugins(f"type=={SNAPSHOTTER_PLUGIN}") if p.ok]

    async def version(self) -> tuple[str, str]:
        with errors.mapped():
            resp = await VersionStub(self.channel).Version(Empty())
        return resp.version, resp.revision

    async def namespaces(self) -> list[str]:
        with errors.mapped():
            resp = await NamespacesStub(self.channel).List(namespaces_pb2.ListNamespacesRequest())
        return [n.name for n in resp.namespaces]

    async def ensure_namespace(self) -> None:
        stub = NamespacesStub(self.channel)
        try:
            with errors.mapped():
                await stub.Get(namespaces_pb2.GetNamespaceRequest(name=self.namespace))
        except errors.NotFound:
            try:
                with errors.mapped():
                    await stub.Create(
                        namespaces_pb2.CreateNamespaceRequest(namespace=namespaces_pb2.Namespace(name=self.namespace))
                    )
            except errors.AlreadyExists:
                pass

    async def content_root(self) -> str | None:
        """The content store's directory as the content plugin exports it; None means: use gRPC
        reads. Whether a blob there is readable by this process is checked per blob."""
        if self._content_root is False:
            root: str | None = None
            try:
                with errors.mapped():
                    resp = await IntrospectionStub(self.channel).Plugins(
                        introspection_pb2.PluginsRequest(filters=[f"type=={CONTENT_PLUGIN}"])
                    )
                for plugin in resp.plugins:
                    candidate = plugin.exports.get("root")
                    if candidate:
                        root = candidate
            except errors.ContainerdError:
                root = None
            self._content_root = root
        return self._content_root  # type: ignore[return-value]
