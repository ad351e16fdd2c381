"""Local image readers: what the push needs from the local machine (the tagged root descriptor,
small blobs in memory, big blobs as streams), from the containerd content store or Docker."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Protocol

import ctrd
from oci import reference as R
from oci.manifest import Desc

from .errors import NoSuchLocalImage, PusshError
from ctrd.content import Source


class ImageSource(Protocol):
    ref: R.Reference
    root: Desc | None  # what the local name points at (an index or a manifest); None until resolve() makes it
    description: str  # for messages: where the image is read from
    compresses: bool  # its layers are compressed by pussh (resolve's zstd chooses how), not read as stored

    async def resolve(self, zstd: bool) -> Desc: ...  # the root to push to a server (zstd: it takes zstd layers)
    def rebuildable(self, layer: Desc) -> bool: ...  # a server's delta helper can make this blob byte for byte
    async def read_small(self, digest: str) -> bytes: ...
    async def has(self, digest: str) -> bool: ...
    def opener(self, digest: str) -> Source: ...
    async def close(self) -> None: ...


class NoAccess(PusshError):
    """The local image store exists but this user may not open it (e.g. the containerd socket)."""


def repository_path(ref: R.Reference) -> str:
    """The registry repository for a reference: the registry names the containerd image like Docker
    does, so docker.io/library/myapp is pushed as library/myapp and ghcr.io/x/y keeps its domain."""
    return ref.path if ref.domain == R.DEFAULT_DOMAIN else f"{ref.domain}/{ref.path}"


def containerd_address(flag: str | None = None) -> str:
    return flag or os.environ.get("CONTAINERD_ADDRESS") or ctrd.DEFAULT_SOCKET


def containerd_namespace(flag: str | None = None) -> str:
    return flag or os.environ.get("CONTAINERD_NAMESPACE") or ctrd.DEFAULT_NAMESPACE


class AsStored:
    """For a source whose layers go as they are stored: pussh compresses none of them, and a server
    can remake none byte for byte (the compressor that made them is not known)."""
    compresses = False

    def rebuildable(self, layer: Desc) -> bool:
        return False


class ContainerdSource(AsStored):
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
                raise NoSuchLocalImage(ref.familiar) from None
            except ctrd.Unavailable as err:
                raise NoAccess(str(err)) from err
        except BaseException:
            client.close()
            raise
        t = img.target
        return cls(client, ref, Desc(t.media_type, t.digest, t.size, annotations=dict(t.annotations)))

    async def resolve(self, zstd: bool) -> Desc:
        return self.root  # layers go as stored

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
                      docker_host: str | None = None, registry_image: str | None = None) -> ImageSource:
    """Choose the local reader: containerd's content store when Docker uses it (or when no Docker
    answers), Docker's export when Docker keeps the classic store."""
    from .dockerinfo import docker_info, uses_containerd_store

    socket = containerd_address(socket_flag)
    namespace = containerd_namespace(namespace_flag)
    info = await docker_info(docker_host)
    if info is not None and not uses_containerd_store(info):
        from .dockerapi import DockerAPI
        from .source_classic import ClassicSource
        docker = DockerAPI(docker_host)
        try:
            return await ClassicSource.open(docker, ref)
        except BaseException:
            await docker.close()
            raise
    try:
        return await ContainerdSource.open(ref, socket, namespace)
    except NoAccess as err:
        if info is None or not registry_image:
            raise PusshError(f"cannot read local images: {err}, and no Docker daemon answers") from None
    # In the docker group but not allowed on containerd's socket: read through a helper container.
    from .dockerapi import DockerAPI
    from .source_helper import HelperSource, NoHelperImage
    docker = DockerAPI(docker_host)
    try:
        try:
            return await HelperSource.open(docker, ref, registry_image, socket, namespace, repository_path(ref))
        except NoHelperImage:
            from .source_save import SaveSource  # the last resort: the whole image through docker save
            return await SaveSource.open(docker, ref)
    except BaseException:
        await docker.close()
        raise
