"""containerd content store: info, labels, reads (direct file or gRPC stream) and resumable writes."""
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

if TYPE_CHECKING:
    from .client import Containerd

# 8 MiB messages were the fastest for gRPC writes here; containerd accepts up to 16 MiB.
WRITE_CHUNK = 8 << 20
WRITE_WINDOW = 3  # WRITE messages in flight per stream
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

    def writer(self, ref: str, *, lease: str | None = None) -> "Writer":
        return Writer(self, ref, lease)

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lock_timeout
        delay = 0.05
        while True:
            opened = False
            try:
                async with self.writer(ref, lease=lease) as w:
                    offset = await w.stat(expected=expected, total=total)
                    opened = True
                    async for chunk in source(offset):
                        await w.write(chunk)
                    await w.commit(labels=labels)
                    return True
            except AlreadyExists:
                return False
            except errors.Unavailable as err:
                if isinstance(err, errors.StreamReset) and await self.exists(expected):
                    return False  # another writer committed it while we wrote
                # Refused before we wrote anything: the ref is locked by another writer.
                locked = "locked" in str(err) or (isinstance(err, errors.StreamReset) and not opened)
                if not locked or loop.time() > deadline:
                    raise
            if await self.exists(expected):
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class Writer:
    """One Write stream. While it is open containerd holds the ingest's lock, so a second writer of
    the same ref gets Unavailable ("locked") until this one closes."""

    def __init__(self, store: ContentStore, ref: str, lease: str | None) -> None:
        self._store = store
        self._ref = ref
        self._lease = lease
        self._cm = None
        self._stream = None
        self.offset = 0
        self.total = 0
        self.expected = ""
        self._ended = False
        self._window = asyncio.Semaphore(WRITE_WINDOW)
        self._in_flight = 0
        self._acks: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def __aenter__(self) -> "Writer":
        md = self._store._client.metadata(lease=self._lease)
        self._cm = self._store._stub.Write.open(metadata=md)
        with errors.mapped():
            self._stream = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._cm is not None and self._stream is not None
        if exc[0] is None and not self._ended:
            # A clean exit without commit (e.g. one chunk of a chunked upload): make sure every
            # byte sent has landed, so the ingest's offset is what the caller believes.
            await self.flush()
        if self._acks is not None:
            self._acks.cancel()
            with contextlib.suppress(BaseException):
                await self._acks
        if not self._ended:
            # Leaving without a commit: reset the stream. containerd keeps the ingest (and its
            # offset) for a later writer of the same ref to resume; the lease bounds its life.
            with contextlib.suppress(Exception):
                await self._stream.cancel()
            with contextlib.suppress(Exception):
                await self._cm.__aexit__(*exc)
            return
        try:
            with errors.mapped():
                await self._cm.__aexit__(*exc)
        except errors.ContainerdError:
            if exc[0] is None:
                raise

    async def _call(self, req: content_pb2.WriteContentRequest, end: bool = False) -> content_pb2.WriteContentResponse:
        assert self._stream is not None
        self._ended = self._ended or end
        with errors.mapped():
            await self._stream.send_message(req, end=end)
            resp = await self._stream.recv_message()
        if resp is None:
            raise errors.Unavailable(f"containerd closed the write stream for {self._ref}")
        return resp

    async def stat(self, *, expected: str = "", total: int = 0) -> int:
        """Open or join the ingest; returns the offset to resume from. Raises AlreadyExists if the
        expected digest is already committed."""
        self.expected, self.total = expected, total
        try:
            resp = await self._call(
                content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=self._ref, expected=expected, total=total)
            )
        except errors.Unavailable:
            # containerd answers "already exists" by resetting the stream, which grpclib reports as
            # a terminated stream rather than the status: look before calling it a failure.
            if expected and await self._store.exists(expected):
                raise AlreadyExists(f"content {expected} already exists") from None
            raise
        self.offset = resp.offset
        if total and resp.total and resp.total != total:
            # An old ingest under this ref announced another size: start it over.
            self.offset = 0
        return self.offset

    async def write(self, data: bytes) -> None:
        """Send data at the current offset. Up to WRITE_WINDOW messages are in flight: containerd
        answers each one, and waiting for every answer before the next send left it idle while
        Python framed the next message."""
        assert self._stream is not None
        for start in range(0, len(data), WRITE_CHUNK):
            piece = data[start : start + WRITE_CHUNK]
            await self._window.acquire()
            self._raise_if_failed()
            req = content_pb2.WriteContentRequest(
                action=content_pb2.WRITE, ref=self._ref, offset=self.offset, data=piece,
                total=self.total, expected=self.expected,
            )
            self._in_flight += 1
            # The ack reader ends whenever nothing is in flight (so it never swallows the commit's
            # reply); start a new one when needed.
            if self._acks is None or self._acks.done():
                self._acks = asyncio.create_task(self._read_acks())
            with errors.mapped():
                await self._stream.send_message(req)
            self.offset += len(piece)

    async def _read_acks(self) -> None:
        assert self._stream is not None
        try:
            while self._in_flight:
                with errors.mapped():
                    resp = await self._stream.recv_message()
                if resp is None:
                    raise errors.Unavailable(f"containerd closed the write stream for {self._ref}")
                self._in_flight -= 1
                self._window.release()
        except BaseException as err:  # surfaced to the writer on its next call
            self._failure = err
            self._window.release()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def flush(self) -> None:
        """Wait until containerd has answered every WRITE sent."""
        if self._acks is not None:
            await self._acks
            self._acks = None
        self._raise_if_failed()

    async def commit(self, labels: Mapping[str, str] | None = None) -> str:
        """Commit the ingest. The request must carry end=True: without it grpclib never delivers the
        reply to a successful commit. A concurrent writer that committed first is AlreadyExists."""
        try:
            await self.flush()
            resp = await self._call(
                content_pb2.WriteContentRequest(
                    action=content_pb2.COMMIT, ref=self._ref, offset=self.offset, total=self.total,
                    expected=self.expected, labels=dict(labels or {}),
                ),
                end=True,
            )
        except errors.Unavailable:
            if self.expected and await self._store.exists(self.expected):
                raise AlreadyExists(f"content {self.expected} already exists") from None
            raise
        return resp.digest


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
