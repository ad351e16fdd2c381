"""containerd content store: info, labels, reads (direct file or gRPC stream) and resumable writes
(through the one Writer, ctrd.writer)."""
from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

from google.protobuf.field_mask_pb2 import FieldMask

from proto import content_pb2
from proto.content_grpc import ContentStub

from . import errors
from .errors import AlreadyExists, FailedPrecondition, NotFound
from .types import Info, IngestStatus
from .writer import WRITE_WINDOW, Writer

if TYPE_CHECKING:
    from .client import Containerd

# Each blob in flight holds about one chunk in the HTTP/SSH path; 1 MiB keeps a push to several
# servers small in memory, and a thread hop per MiB costs nothing next to the copy.
READ_CHUNK = 1 << 20

# A function that yields the blob's bytes starting at the given offset (so a write can resume).
Source = Callable[[int], AsyncIterator[bytes]]


class ContentStore:
    def __init__(self, client: "Containerd") -> None:
        self._client = client
        self._stub = ContentStub(client.channel)

    async def info(self, digest: str) -> Info:
        with errors.mapped():
            resp = await self._stub.Info(content_pb2.InfoRequest(digest=digest), metadata=self._client.metadata())
        return Info.from_pb(resp.info)

    async def exists(self, digest: str) -> Info | None:
        try:
            return await self.info(digest)
        except NotFound:
            return None

    async def set_labels(self, digest: str, labels: Mapping[str, str]) -> Info:
        """Set (or, with an empty value, remove) only the given labels, leaving the others alone."""
        req = content_pb2.UpdateRequest(
            info=content_pb2.Info(digest=digest, labels={k: v for k, v in labels.items() if v}),
            update_mask=FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        with errors.mapped():
            resp = await self._stub.Update(req, metadata=self._client.metadata())
        return Info.from_pb(resp.info)

    async def list(self, *filters: str) -> list[Info]:
        out: list[Info] = []
        with errors.mapped():
            async with self._stub.List.open(metadata=self._client.metadata()) as stream:
                await stream.send_message(content_pb2.ListContentRequest(filters=list(filters)), end=True)
                async for resp in stream:
                    out.extend(Info.from_pb(i) for i in resp.info)
        return out

    async def delete(self, digest: str) -> None:
        with errors.mapped():
            await self._stub.Delete(content_pb2.DeleteContentRequest(digest=digest), metadata=self._client.metadata())

    # -- reads ---------------------------------------------------------------------------------

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """Stream a blob: straight from its file when this process can read the content root,
        otherwise through gRPC Read. Both give the same bytes."""
        path = await self.blob_path(digest)
        if path is not None:
            async for chunk in read_file(path, offset, size):
                yield chunk
            return
        async for chunk in self.read_grpc(digest, offset, size):
            yield chunk

    async def read_grpc(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        with errors.mapped():
            async with self._stub.Read.open(metadata=self._client.metadata()) as stream:
                await stream.send_message(
                    content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size), end=True
                )
                async for resp in stream:
                    yield resp.data

    async def blob_path(self, digest: str) -> str | None:
        """The blob's file under the content root, if this process may read it directly."""
        root = await self._client.content_root()
        if root is None:
            return None
        algo, _, hexpart = digest.partition(":")
        path = os.path.join(root, "blobs", algo, hexpart)
        return path if os.access(path, os.R_OK) else None

    async def read_all(self, digest: str, limit: int = 16 << 20) -> bytes:
        """A small blob (manifest, index, config) in memory; refuses anything over `limit`."""
        buf = bytearray()
        async for chunk in self.read(digest):
            buf += chunk
            if len(buf) > limit:
                raise FailedPrecondition(f"blob {digest} is larger than {limit} bytes")
        return bytes(buf)

    # -- writes --------------------------------------------------------------------------------

    async def status(self, ref: str) -> IngestStatus:
        with errors.mapped():
            resp = await self._stub.Status(content_pb2.StatusRequest(ref=ref), metadata=self._client.metadata())
        return IngestStatus.from_pb(resp.status)

    async def list_statuses(self, *filters: str) -> list[IngestStatus]:
        with errors.mapped():
            resp = await self._stub.ListStatuses(
                content_pb2.ListStatusesRequest(filters=list(filters)), metadata=self._client.metadata()
            )
        return [IngestStatus.from_pb(s) for s in resp.statuses]

    async def abort(self, ref: str) -> None:
        with errors.mapped():
            await self._stub.Abort(content_pb2.AbortRequest(ref=ref), metadata=self._client.metadata())

    def writer(self, ref: str, *, lease: str | None = None, window: int = WRITE_WINDOW) -> Writer:
        return Writer(self._client, ref, lease, window=window)

    async def write_blob(
        self,
        ref: str,
        source: Source,
        *,
        expected: str,
        total: int,
        labels: Mapping[str, str] | None = None,
        lease: str | None = None,
        lock_timeout: float = 600.0,
    ) -> bool:
        """Write a whole blob, resuming the ingest from wherever `ref` stands. Returns False when the
        blob was already present (not an error: another writer got there first). While another
        writer holds the same ref, wait for it (up to `lock_timeout` seconds) rather than fail."""
        try:
            async with self.writer(ref, lease=lease) as w:
                offset = await w.open(expected=expected, total=total, lock_timeout=lock_timeout)
                async for chunk in source(offset):
                    await w.write(chunk)
                await w.commit(labels=labels)
                return True
        except AlreadyExists:
            return False
        except errors.Unavailable:
            # grpclib reports containerd's AlreadyExists (another writer committed it while we
            # wrote) as a reset stream: look before calling it a failure.
            with contextlib.suppress(errors.ContainerdError):
                if await self.exists(expected):
                    return False
            raise


async def read_file(path: str, offset: int = 0, size: int = 0, chunk: int = READ_CHUNK) -> AsyncIterator[bytes]:
    """Read a file in chunks on a worker thread, so the event loop never blocks on disk."""
    loop = asyncio.get_running_loop()
    f = await loop.run_in_executor(None, open, path, "rb", 0)
    try:
        if offset:
            f.seek(offset)
        remaining = size if size > 0 else -1
        while remaining != 0:
            n = chunk if remaining < 0 else min(chunk, remaining)
            data = await loop.run_in_executor(None, f.read, n)
            if not data:
                break
            if remaining > 0:
                remaining -= len(data)
            yield data
    finally:
        f.close()
