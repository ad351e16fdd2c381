"""The containerd client: one grpclib channel on the daemon's unix socket, scoped to a namespace."""
from __future__ import annotations

import os
from typing import Any

from google.protobuf.empty_pb2 import Empty
from grpclib.client import Channel

from proto import introspection_pb2, namespaces_pb2
from proto.introspection_grpc import IntrospectionStub
from proto.namespaces_grpc import NamespacesStub
from proto.version_grpc import VersionStub

from . import errors
from .content import ContentStore
from .images import ImageStore
from .leases import Leases

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "moby"  # Docker's containerd image store keeps its images here
CONTENT_PLUGIN = "io.containerd.content.v1"


class Containerd:
    """Usage: `async with Containerd(path, namespace) as c: await c.content.info(dgst)`.

    Calls carry the namespace as `containerd-namespace` metadata and, where a lease is given,
    `containerd-lease` metadata, as containerd's own Go client does."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.socket_path = socket_path
        self.namespace = namespace
        self.channel = Channel(path=socket_path)
        self.content = ContentStore(self)
        self.images = ImageStore(self)
        self.leases = Leases(self)
        self._content_root: str | None | bool = False  # False: not looked up yet

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

    async def version(self) -> tuple[str, str]:
        with errors.mapped():
            resp = await VersionStub(self.channel).Version(Empty())
        return resp.version, resp.revision

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
