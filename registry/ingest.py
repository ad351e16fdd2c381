"""One containerd Write stream ("ingest"), held open across the HTTP requests of an upload.

Why not `ctrd`'s `Writer` as is: an upload is several requests (POST, PATCH..., PUT), and
- reopening the ingest for every request makes containerd's local store re-read and re-hash
  everything written so far (a 1 GB layer PATCHed and then PUT would be hashed twice), and a
  stream that was reset rather than ended releases its lock asynchronously, so the next request
  could find the ref still "locked";
- the hot path wants WRITE messages pipelined (containerd acknowledges each one; waiting for every
  answer before the next send leaves it idle while Python frames the next message), with an
  explicit flush so that the offset we report in `Range` is one containerd has confirmed.
So the registry keeps this small stream object per upload and ends it gracefully (a STAT with
END_STREAM, which makes containerd close the writer and release the lock before it answers).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping

from grpclib.client import Channel
from grpclib.encoding.proto import ProtoCodec

from proto import content_pb2
from proto.content_grpc import ContentStub

from ctrd import Containerd, errors

# Messages in flight on one stream: enough to keep containerd busy while the next one is framed.
WINDOW = 2
_DATA_TAG = b"\x32"  # field 6 (data), wire type 2 (length-delimited)


class PreEncodedCodec(ProtoCodec):
    """Protobuf, except that a message already encoded (bytes) passes through. A WRITE is built
    as its small header fields plus the data field appended straight from the HTTP body pieces:
    one copy of the bytes instead of three (join, SerializeToString, grpclib's framing)."""

    def encode(self, message, message_type):  # type: ignore[override]
        if isinstance(message, (bytes, bytearray)):
            return message
        return super().encode(message, message_type)


def write_channel(ctr: Containerd) -> Channel:
    """A channel for write streams (the codec is per channel in grpclib)."""
    return Channel(path=ctr.socket_path, codec=PreEncodedCodec())


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


def encode_write(ref: str, offset: int, parts: list[bytes], size: int) -> bytes:
    header = content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=ref, offset=offset).SerializeToString()
    return b"".join([header, _DATA_TAG, _varint(size), *parts])


class Ingest:
    def __init__(self, ctr: Containerd, ref: str, lease: str | None, channel: Channel | None = None) -> None:
        self._ctr = ctr
        self._channel = channel or ctr.channel
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
        self.closed = False

    # -- opening ---------------------------------------------------------------------------------

    async def open(self, *, expected: str = "", lock_timeout: float = 30.0) -> int:
        """Open (or join) the ingest and return its offset. While another stream holds the ref
        (a request of the same upload still finishing), wait for it instead of failing. Raises
        AlreadyExists when `expected` is given and already committed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lock_timeout
        delay = 0.02
        while True:
            try:
                return await self._open_once(expected)
            except errors.AlreadyExists:
                await self.abandon()
                raise
            except errors.Unavailable as err:
                await self.abandon()
                if expected and await self._ctr.content.exists(expected):
                    raise errors.AlreadyExists(f"content {expected} already exists") from None
                # A lost status (StreamReset) on STAT is how grpclib reports "locked" most often.
                if not ("locked" in str(err) or isinstance(err, errors.StreamReset)) or loop.time() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _open_once(self, expected: str) -> int:
        self.closed, self._ended, self._failure = False, False, None
        stub = ContentStub(self._channel)
        self._cm = stub.Write.open(metadata=self._ctr.metadata(lease=self._lease))
        with errors.mapped():
            self._stream = await self._cm.__aenter__()
            await self._stream.send_message(
                content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=self.ref, expected=expected)
            )
            resp = await self._stream.recv_message()
        if resp is None:
            raise errors.StreamReset(f"containerd closed the write stream for {self.ref}")
        self.offset, self.digest = resp.offset, resp.digest
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
        """Send one WRITE at the current offset without waiting for its answer (up to WINDOW in
        flight). A list of pieces is sent as one message (on a PreEncodedCodec channel, without
        joining them first)."""
        parts = data if isinstance(data, list) else [data]
        size = sum(len(p) for p in parts)
        if not size:
            return
        self._check()
        while len(self._pending) >= WINDOW:
            await asyncio.shield(self._pending[0])
            self._check()
        if isinstance(self._channel._codec, PreEncodedCodec):
            req = encode_write(self.ref, self.offset, parts, size)
        else:
            req = content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref=self.ref, offset=self.offset,
                                                  data=b"".join(parts))
        if isinstance(data, list):
            data.clear()  # consumed: the pieces are in `req` now; holding them would double the memory
        del parts, data
        await self._send(req)  # type: ignore[arg-type]
        self.offset += size

    async def flush(self) -> int:
        """Wait until containerd has answered every WRITE; returns the confirmed offset."""
        while self._pending:
            await asyncio.shield(self._pending[-1])
        self._check()
        return self.offset

    async def commit(self, expected: str, labels: Mapping[str, str] | None = None) -> None:
        """Commit what was written as `expected` (containerd verifies the digest). The COMMIT
        carries END_STREAM: grpclib delivers the reply to a successful commit only then."""
        await self.flush()
        fut = await self._send(content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT, ref=self.ref, offset=self.offset, expected=expected,
            labels=dict(labels or {})), end=True)
        try:
            await asyncio.shield(fut)
        finally:
            await self._finish()

    async def close(self) -> None:
        """End the stream without committing; the ingest keeps its data for the next request."""
        if self.closed:
            return
        try:
            if self._failure is None and self._stream is not None and not self._ended:
                await self.flush()
                fut = await self._send(content_pb2.WriteContentRequest(action=content_pb2.STAT, ref=self.ref), end=True)
                await asyncio.shield(fut)
        except (errors.ContainerdError, asyncio.CancelledError):
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
        self._cm = self._stream = None

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
        self._cm = self._stream = None

    # -- plumbing --------------------------------------------------------------------------------

    async def _send(self, req: content_pb2.WriteContentRequest, end: bool = False):
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
