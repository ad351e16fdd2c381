"""Local image readers: what the push needs from the local machine (the tagged root descriptor,
small blobs in memory, big blobs as streams), from the containerd content store or Docker."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Protocol

import ctrd
from oci import reference as R
from oci.manifest import Desc

from .errors import PusshError
from .upload import Source


class ImageSource(Protocol):
    ref: R.Reference
    root: Desc  # the descriptor the local name points at (an index or a manifest)
    description: str  # for messages: where the image is read from

    async def read_small(self, digest: str) -> bytes: ...
    async def has(self, digest: str) -> bool: ...
    def opener(self, digest: str) -> Source: ...
    async def close(self) -> None: ...


class NoAccess(PusshError):
    """The local image store exists but this user may not open it (e.g. the containerd socket)."""


def containerd_address(flag: str | None = None) -> str:
    return flag or os.environ.get("CONTAINERD_ADDRESS") or ctrd.DEFAULT_SOCKET


def containerd_namespace(flag: str | None = None) -> str:
    return flag or os.environ.get("CONTAINERD_NAMESPACE") or ctrd.DEFAULT_NAMESPACE


class ContainerdSource:
    """Reads straight from the local containerd content store (blob files where readable)."""

    def __init__(self, client: ctrd.Containerd, ref: R.Reference, root: Desc) -> None:
        self.client = client
        self.ref = ref
        self.root = root
        self.description = f"containerd {client.socket_path} (namespace {client.namespace})"

    @classmethod
    async def open(cls, ref: R.Reference, socket: str, namespace: str) -> "ContainerdSource":
        client = ctrd.Containerd(socket, namespace)
        try:
            if not os.path.exists(socket):
                raise NoAccess(f"no containerd socket at {socket}")
            if not os.access(socket, os.R_OK | os.W_OK):
                raise NoAccess(f"permission denied on the containerd socket {socket}")
            try:
                img = await client.images.get(ref.name)
            except ctrd.NotFound:
                raise PusshError(f"no such local image: {ref.familiar}") from None
            except ctrd.Unavailable as err:
                raise NoAccess(str(err)) from err
        except BaseException:
            client.close()
            raise
        t = img.target
        return cls(client, ref, Desc(t.media_type, t.digest, t.size, annotations=dict(t.annotations)))

    async def read_small(self, digest: str) -> bytes:
        return await self.client.content.read_all(digest)

    async def has(self, digest: str) -> bool:
        return await self.client.content.exists(digest) is not None

    def opener(self, digest: str) -> Source:
        def source(offset: int) -> AsyncIterator[bytes]:
            return self.client.content.read(digest, offset=offset)
        return source

    async def close(self) -> None:
        self.client.close()


async def open_source(ref: R.Reference, *, socket_flag: str | None = None, namespace_flag: str | None = None,
                      docker_host: str | None = None, ui=None) -> ImageSource:
    """Choose the local reader: containerd's content store when Docker uses it (or no Docker runs)."""
    socket = containerd_address(socket_flag)
    namespace = containerd_namespace(namespace_flag)
    return await ContainerdSource.open(ref, socket, namespace)
