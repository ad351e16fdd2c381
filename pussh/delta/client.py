"""The client side of a sub-layer delta: start the helper on the server, learn the base's chunks,
stream the local layer's uncompressed tar through the same chunker, and send only the chunks the
base lacks (zlib, in frames) plus references to the rest. The helper rebuilds the tar and checks
it against the diffID; a layer whose delta fails in any way is sent whole by the caller."""
from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncssh
import zstandard

from ctrd.content import Source
from oci.manifest import Desc

from ..errors import PusshError
from ..ssh import Connection
from . import helper, when

SCRIPT = Path(helper.__file__).read_text()
FRAME = 256 << 10  # compressed bytes per frame on the wire
LITERAL_FLUSH = 1 << 20  # literal bytes gathered before they become an op
ZLIB_LEVEL = 6  # the server's stdlib inflates it; zstd is not there


class DeltaFailed(PusshError):
    """This layer's delta could not be made (no base, a mismatch, the helper gone): send it whole."""


@dataclass
class LayerDelta:
    """What the JSON result says of one layer the delta was tried for."""
    digest: str  # the layer blob
    diff_id: str
    base: str  # where the base's chunks came from (a chain ID or a blob digest)
    rebuilt: bool = False  # the server rebuilt it from the delta (else it was sent whole)
    exact: bool = True  # the server now has the same bytes as the local image (else: rewritten blob)
    stored_digest: str | None = None  # the blob the server stores, where it differs from `digest`
    bytes_sent: int = 0  # bytes of the delta on the wire (commands, references, compressed literals)
    shared: int = 0  # uncompressed bytes taken from the base
    size: int = 0  # uncompressed size of the layer
    error: str | None = None  # why it fell back to the full blob

    def to_json(self) -> dict:
        return asdict(self)


def decompressor(media_type: str):
    """A streaming decompressor for a layer blob: .pieces(bytes) yields its output in bounded
    pieces (a compressed run of zeros may expand a thousandfold: RSS stays small)."""
    if "zstd" in media_type:
        return _Unzstd()
    if "gzip" in media_type:
        return _Gunzip()
    if media_type.endswith("tar"):
        return _Identity()
    raise DeltaFailed(f"layer media type {media_type} is not one pussh can read uncompressed")


class _Identity:
    def pieces(self, data: bytes) -> Iterator[bytes]:
        yield data


class _Gunzip:
    """gzip, with further members (concatenated gzip) read on."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(47)

    def pieces(self, data: bytes) -> Iterator[bytes]:
        while data:
            yield self._z.decompress(data, helper.INFLATE_PIECE)
            if self._z.eof:
                data = self._z.unused_data
                self._z = zlib.decompressobj(47)
            else:
                data = self._z.unconsumed_tail


class _Unzstd:
    """zstd has no output bound per call: the input goes in small slices instead."""
    SLICE = 16 << 10

    def __init__(self) -> None:
        self._z = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def pieces(self, data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), self.SLICE):
            yield self._z.decompress(data[i:i + self.SLICE])


class Session:
    """One helper process on the server for a push: its commands one after another (a lock)."""

    def __init__(self, conn: Connection, proc: asyncssh.SSHClientProcess) -> None:
        self.conn, self.proc = conn, proc
        self.lock = asyncio.Lock()
        self.loading = False

    @classmethod
    async def open(cls, conn: Connection, prefix: tuple[str, ...], python: str, tmp_parent: str) -> "Session":
        argv = [*prefix, python or "python3", "-c", SCRIPT, tmp_parent]
        try:
            proc = await conn.conn.create_process(shlex.join(argv), encoding=None, stderr=asyncssh.DEVNULL)
        except (asyncssh.Error, OSError) as err:
            raise DeltaFailed(f"the delta helper did not start: {err}") from err
        return cls(conn, proc)

    async def _send(self, obj: dict) -> int:
        line = json.dumps(obj).encode() + b"\n"
        self.proc.stdin.write(line)
        await self.proc.stdin.drain()
        return len(line)

    async def _reply(self) -> dict:
        line = await self.proc.stdout.readline()
        if not line:
            raise DeltaFailed("the delta helper ended")
        try:
            return json.loads(line)
        except ValueError as err:
            raise DeltaFailed(f"the delta helper said {line[:80]!r}") from err

    async def layer(self, base: dict, source: Source, layer: Desc, diff_id: str, name: str,
                    record: LayerDelta, progress: Callable[[int], None] = lambda n: None,
                    gzip: bool = False) -> str | None:
        """Rebuild `layer` on the server as the file `name` in the helper's directory, from the base
        named by `base` (a helper "base" command), gzipped there with `gzip` (then: the digest of
        that blob); counts into `record`. DeltaFailed: send it whole."""
        async with self.lock:
            try:
                return await self._layer(base, source, layer, diff_id, name, record, progress, gzip)
            except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as err:
                raise DeltaFailed(f"the delta helper went away: {type(err).__name__}: {err}") from err

    async def _layer(self, base: dict, source: Source, layer: Desc, diff_id: str, name: str,
                     record: LayerDelta, progress: Callable[[int], None], gzip: bool) -> str | None:
        record.bytes_sent += await self._send({"op": "base", **base})
        reply = await self._reply()
        if not reply.get("ok"):
            raise DeltaFailed(f"no base: {reply.get('error')}")
        listing = await self.proc.stdout.readexactly(int(reply["count"]) * helper.DIGEST)
        d = helper.DIGEST
        index = {listing[i:i + d]: i // d for i in range(0, len(listing), d)}
        record.bytes_sent += await self._send({"op": "delta", "diff_id": diff_id, "name": name, "gzip": gzip})
        sent, problem = await self._stream_ops(source, layer, index, record, progress)
        record.bytes_sent += sent
        reply = await self._reply()  # (read even so: the next command's reply comes after it)
        if problem:
            raise DeltaFailed(problem)
        if not reply.get("ok"):
            raise DeltaFailed(str(reply.get("error")))
        record.size = int(reply["size"])
        return reply.get("digest")

    async def _stream_ops(self, source: Source, layer: Desc, index: dict[bytes, int], record: LayerDelta,
                          progress: Callable[[int], None]) -> tuple[int, str | None]:
        """The local layer, uncompressed and chunked, as ops: references where the base has the
        chunk, literal bytes elsewhere. Returns the bytes written, and why the delta cannot be
        used (None: it can, if the helper's check agrees). A base that turns out to share little
        ends the stream early (the helper then fails it): the full blob is cheaper than compressing
        the whole layer here."""
        unpack = decompressor(layer.media_type)
        chunker = helper.TarChunker()
        deflate = zlib.compressobj(ZLIB_LEVEL)
        whole = hashlib.sha256()
        literal = bytearray()
        pending = bytearray()  # compressed, not yet framed
        written = 0

        async def flush_frames(final: bool = False) -> None:
            nonlocal written
            while len(pending) >= FRAME or (final and pending):
                frame = bytes(pending[:FRAME])
                del pending[:FRAME]
                self.proc.stdin.write(struct.pack(">I", len(frame)) + frame)
                written += 4 + len(frame)
                await self.proc.stdin.drain()

        def op(data: bytes) -> None:
            pending.extend(deflate.compress(data))

        def flush_literal() -> None:
            if literal:
                op(b"L" + struct.pack(">I", len(literal)) + bytes(literal))
                literal.clear()

        def parts(pieces: list[tuple[str, bytes]]) -> None:
            for kind, data in pieces:
                if kind == "data" and len(data) >= helper.MIN_REF:
                    i = index.get(helper.chunk_digest(data))
                    if i is not None:
                        flush_literal()
                        op(b"R" + struct.pack(">I", i))
                        record.shared += len(data)
                        continue
                literal.extend(data)
                if len(literal) >= LITERAL_FLUSH:
                    flush_literal()

        seen = read = 0
        problem = None
        async for raw in source(0):
            progress(len(raw))
            read += len(raw)
            for data in unpack.pieces(raw):
                whole.update(data)
                seen += len(data)
                parts(chunker.feed(data))
                await flush_frames()
            if when.too_little_shared(read, layer.size, seen, record.shared):
                problem = (f"the base shares only {record.shared * 100 // seen} % of the first "
                           f"{seen >> 20} MiB")
                break
        if problem is None:
            parts(chunker.end())
            flush_literal()
            op(b"E")
        pending.extend(deflate.flush())
        await flush_frames(final=True)
        self.proc.stdin.write(struct.pack(">I", 0))
        written += 4
        await self.proc.stdin.drain()
        if problem is None and "sha256:" + whole.hexdigest() != record.diff_id:
            # the server's check fails too; said here because it is the local image that is wrong
            problem = f"the local layer {layer.digest} does not hash to its diffID {record.diff_id}"
        return written, problem

    async def store(self, name: str, into: str) -> tuple[str, int]:
        """The layer `name` the helper rebuilt gzipped, moved into the directory `into`
        (containerd's blobs/sha256): its digest and size."""
        async with self.lock:
            try:
                await self._send({"op": "store", "name": name, "into": into})
                reply = await self._reply()
            except (asyncssh.Error, OSError) as err:
                raise DeltaFailed(f"the delta helper went away: {type(err).__name__}: {err}") from err
        if not reply.get("ok"):
            raise DeltaFailed(str(reply.get("error")))
        return str(reply["digest"]), int(reply["size"])

    async def start_load(self, docker: tuple[str, ...], files: dict[str, str]) -> asyncssh.SSHClientProcess:
        """From here the helper is `docker load -q` with the rebuilt layers spliced in: write the
        docker-save tar to the returned process (a member in `files` as a header only)."""
        async with self.lock:
            self.loading = True
            await self._send({"op": "load", "argv": list(docker), "files": files})
            return self.proc

    async def close(self) -> None:
        """The helper removes its directory as its stdin ends."""
        if not self.loading:
            try:
                self.proc.stdin.write_eof()
            except (asyncssh.Error, OSError):
                pass
        try:
            await asyncio.wait_for(self.proc.wait_closed(), 10)
        except (asyncio.TimeoutError, asyncssh.Error, OSError):
            pass
        self.proc.close()

