"""The one containerd content writer: a Write stream ("ingest") on one ref. The registry keeps one
per upload across the upload's HTTP requests; ContentStore.write_blob (pussh's direct path, pull)
opens one per blob.

- The stream may stay open across many calls: reopening an ingest makes containerd's local store
  re-read and re-hash everything written so far (a 1 GB layer PATCHed and then PUT would be hashed
  twice), and a stream that was reset releases its lock only a moment later.
- WRITE messages are pipelined (up to `window` unanswered): waiting for each answer before the next
  send leaves containerd idle while Python frames the next message. flush() waits for the answers,
  so the offset it returns is one containerd has confirmed.
- close() ends the stream gracefully, with a STAT carrying END_STREAM: containerd closes the writer
  and releases the lock before it answers. abandon() resets it, after a failure.
- On a channel with PreEncodedCodec (every channel ctrd opens itself) a WRITE is encoded as its
  header fields followed by the data field built straight from the caller's pieces: one copy of the
  bytes instead of three (join, SerializeToString, grpclib's framing).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from grpclib.encoding.proto import ProtoCodec

from proto import content_pb2
from proto.content_grpc import ContentStub

from . import errors

if TYPE_CHECKING:
    from .client import Containerd

# 8 MiB messages were the fastest for gRPC writes here; containerd accepts up to 16 MiB.
WRITE_CHUNK = 8 << 20
WRITE_WINDOW = 3  # WRITE messages in flight per stream, unless the caller says otherwise
_DATA_TAG = b"\x32"  # field 6 (data), wire type 2 (length-delimited)


class PreEncodedCodec(ProtoCodec):
    """Protobuf, except that a message already encoded (bytes) passes through."""

    def encode(self, message, message_type):  # type: ignore[override]
        if isinstance(message, (bytes, bytearray)):
            return message
        return super().encode(message, message_type)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_write(ref: str, offset: int, parts: list, size: int, *, total: int = 0, expected: str = "") -> bytes:
    """A WRITE message: fields 1-5, then data (field 6) from `parts`, the order protobuf itself uses."""
    header = content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=ref, offset=offset, total=total,
                                             expected=expected).SerializeToString()
    return b"".join([header, _DATA_TAG, _varint(size), *parts])


class Writer:
    """Usage: `async with store.writer(ref, lease=...) as w: offset = await w.open(...)`, then
    write(), flush(), commit(). Leaving the block without a commit ends the stream gracefully (on an
    exception: resets it); containerd keeps the ingest at its offset for the next writer of `ref`.
    While the stream is open containerd holds the ref's lock: a second writer gets Locked."""

    def __init__(self, client: "Containerd", ref: str, lease: str | None = None, *,
                 window: int = WRITE_WINDOW) -> None:
        self._client = client
        self._window = window
        self.ref = ref
        self._lease = lease
        self._cm = None
        self._stream = None
        self._pending: collections.deque[asyncio.Future[content_pb2.WriteContentResponse]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._ended = False
        self.offset = 0
        self.digest = ""  # of what the ingest holds, as containerd's STAT reported it
        self.expected = ""
        self.total = 0
        self.closed = True  # no stream open

    async def __aenter__(self) -> "Writer":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abandon()

    # -- opening ---------------------------------------------------------------------------------

    async def open(self, *, expected: str = "", total: int = 0, lock_timeout: float = 0.0) -> int:
        """Open (or join) the ingest and return the offset to resume from. While another stream
        holds the ref, wait for it up to `lock_timeout` seconds, then raise Locked (or StreamReset).
        Raises AlreadyExists when `expected` is given and already committed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lock_timeout
        delay = 0.02
        while True:
            try:
                return await self._open_once(expected, total)
            except errors.Unavailable as err:
                await self.abandon()
                # containerd answers "already exists" by resetting the stream, which grpclib
                # reports as a terminated stream rather than the status: look before failing.
                if expected and await self._client.content.exists(expected):
                    raise errors.AlreadyExists(f"content {expected} already exists") from None
                # A lost status (StreamReset) on the STAT is how grpclib reports Locked most often.
                if not isinstance(err, (errors.Locked, errors.StreamReset)) or loop.time() + delay > deadline:
                    raise
            except BaseException:
                await self.abandon()
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _open_once(self, expected: str, total: int) -> int:
        self.closed, self._ended, self._failure = False, False, None
        self.expected, self.total = expected, total
        self._cm = ContentStub(self._client.channel).Write.open(metadata=self._client.metadata(lease=self._lease))
        with errors.mapped(unavailable=errors.Locked):
            self._stream = await self._cm.__aenter__()
            await self._stream.send_message(content_pb2.WriteContentRequest(
                action=content_pb2.STAT, ref=self.ref, expected=expected, total=total))
            resp = await self._stream.recv_message()
        if resp is None:
            raise errors.StreamReset(f"containerd closed the write stream for {self.ref}")
        self.offset, self.digest = resp.offset, resp.digest
        if total and resp.total and resp.total != total:
            self.offset = 0  # an old ingest under this ref announced another size: start it over
        self._reader = asyncio.get_running_loop().create_task(self._read_replies())
        return self.offset

    def holds(self, expected: str, size: int) -> bool:
        """Whether the ingest, as opened, already is the whole of `expected`: commit, do not write.
        With containerd 1.7's default `content_sharing_policy = "shared"`, a STAT whose expected
        digest is absent from the namespace but still in the store (deleted and not yet collected,
        or another namespace's) opens a writer that reports the blob's full size and digest; a
        WRITE after that would append the bytes a second time. The commit alone adopts the blob,
        and the ingest's expected digest keeps it from GC meanwhile."""
        return self.offset == size and self.digest == expected

    def rewind(self) -> None:
        """Write from offset 0 again: containerd truncates the ingest on a WRITE at 0."""
        if self._pending:
            raise RuntimeError("rewind with writes in flight")
        self.offset = 0

    # -- writing ---------------------------------------------------------------------------------

    async def write(self, data: bytes | list[bytes]) -> None:
        """Send data at the current offset without waiting for containerd's answer. A list of
        pieces goes as one message and is emptied (holding the pieces would double the memory);
        bytes longer than WRITE_CHUNK go as several messages."""
        if isinstance(data, list):
            await self._write_message(data)
            return
        if len(data) <= WRITE_CHUNK:
            await self._write_message([data])  # whole: b"".join of one bytes object does not copy it
            return
        view = memoryview(data)
        for start in range(0, len(view), WRITE_CHUNK):
            await self._write_message([view[start:start + WRITE_CHUNK]])

    async def _write_message(self, parts: list) -> None:
        size = sum(len(p) for p in parts)
        if not size:
            return
        self._check()
        while len(self._pending) >= self._window:
            await asyncio.shield(self._pending[0])
            self._check()
        if self._client.pre_encodes:
            req = encode_write(self.ref, self.offset, parts, size, total=self.total, expected=self.expected)
        else:
            req = content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=self.ref, offset=self.offset,
                                                  total=self.total, expected=self.expected, data=b"".join(parts))
        parts.clear()  # consumed: the bytes are in `req` now
        await self._send(req)  # type: ignore[arg-type]
        self.offset += size

    async def flush(self) -> int:
        """Wait until containerd has answered every WRITE; returns the confirmed offset."""
        while self._pending:
            await asyncio.shield(self._pending[-1])
        self._check()
        return self.offset

    async def commit(self, labels: Mapping[str, str] | None = None, *, expected: str = "") -> str:
        """Commit what was written as `expected` (default: the digest given to open); containerd
        verifies digest and, if open was given one, size. The COMMIT carries END_STREAM: grpclib
        delivers the reply to a successful commit only then."""
        self.expected = expected or self.expected
        await self.flush()
        fut = await self._send(content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT, ref=self.ref, offset=self.offset, total=self.total, expected=self.expected,
            labels=dict(labels or {})), end=True)
        try:
            return (await asyncio.shield(fut)).digest
        finally:
            await self._finish()

    async def close(self) -> None:
        """End the stream without committing; the ingest keeps its data for the next writer."""
        if self.closed:
            return
        try:
            if self._failure is not None:
                raise self._failure
            if self._stream is not None and not self._ended:
                await self.flush()
                fut = await self._send(content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=self.ref),
                                       end=True)
                await asyncio.shield(fut)
        except BaseException:
            await self.abandon()
            raise
        await self._finish()

    async def abandon(self) -> None:
        """Reset the stream (after a failure): containerd releases the lock on its own time."""
        self.closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        for fut in self._pending:
            if not fut.done():
                fut.cancel()
        self._pending.clear()
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.cancel()
        if self._cm is not None:
            with contextlib.suppress(BaseException):
                await self._cm.__aexit__(None, None, None)
        self._cm = self._stream = self._reader = None

    async def _finish(self) -> None:
        self.closed = True
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader
        if self._cm is not None:
            try:
                with errors.mapped():
                    await self._cm.__aexit__(None, None, None)
            except errors.ContainerdError:
                pass  # the replies we needed have arrived; a lost trailer changes nothing
        self._cm = self._stream = self._reader = None

    # -- plumbing --------------------------------------------------------------------------------

    async def _send(self, req: content_pb2.WriteContentRequest | bytes, end: bool = False):
        assert self._stream is not None
        fut: asyncio.Future[content_pb2.WriteContentResponse] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        self._ended = self._ended or end
        try:
            with errors.mapped():
                await self._stream.send_message(req, end=end)
        except BaseException as err:
            self._fail(err)
            raise
        return fut

    async def _read_replies(self) -> None:
        """Match containerd's replies, in order, to the messages sent."""
        assert self._stream is not None
        try:
            while True:
                with errors.mapped():
                    resp = await self._stream.recv_message()
                if resp is None:
                    if self._pending:
                        raise errors.StreamReset(f"containerd closed the write stream for {self.ref}")
                    return
                if not self._pending:
                    raise errors.ContainerdError("containerd answered a message we did not send")
                fut = self._pending.popleft()
                if not fut.done():
                    fut.set_result(resp)
        except asyncio.CancelledError:
            raise
        except BaseException as err:
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        if self._failure is None:
            self._failure = err
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: the caller sees it through _check()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self.closed:
            raise errors.Unavailable(f"write stream for {self.ref} is closed")
