"""Local images from Docker's classic store (overlay2 & co.), which keeps layers only unpacked:
export them through the Engine API (`GET /images/{name}/get`, a docker-save tar, streamed), compress
each layer once (zstd, or gzip for servers whose Docker predates zstd layers) and keep the result in
a cache by diffID (~/.cache/pussh), so a repeated push exports and compresses nothing."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import zstandard

from ctrd.content import read_file
from oci import digest as D
from oci import mediatypes as MT
from oci import reference as R
from oci.manifest import Desc

from .delta.helper import BlockGzip
from .dockerapi import DockerAPI
from .errors import NoSuchLocalImage, PusshError
from ctrd.content import Source

ZSTD_LEVEL = 3
_BLOB_NAME = re.compile(r"^(?:blobs/sha256/)([a-f0-9]{64})$")


def cache_dir() -> Path:
    base = os.environ.get("PUSSH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pussh")
    return Path(base)


class _Compressor:
    """Deterministic output (no timestamps), so two clients make the same blob from one layer. gzip
    is the delta helper's BlockGzip: a containerd-store server can then rebuild such a layer's blob
    byte for byte from a sub-layer delta (pussh.delta.containerd), and the push stays exact."""

    def __init__(self, zstd: bool) -> None:
        self._parts: list[bytes] = []
        if zstd:
            self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        else:
            self._gzip = BlockGzip(self._parts.append)
        self.zstd = zstd

    def compress(self, data: bytes) -> bytes:
        if self.zstd:
            return self._zstd.compress(data)
        self._gzip.write(data)
        return self._take()

    def flush(self) -> bytes:
        if self.zstd:
            return self._zstd.flush()
        self._gzip.close()
        return self._take()

    def abort(self) -> None:
        if not self.zstd:
            self._gzip.abort()

    def _take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _ThreadReader:
    """A blocking file-like view of an async byte stream, for tarfile running in a worker thread."""

    def __init__(self, stream: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._stream, self._loop = stream, loop
        self._buf = bytearray()
        self._eof = False

    async def _next(self) -> bytes | None:
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            return None

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            chunk = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
            if chunk is None:
                self._eof = True
            else:
                self._buf += chunk
        if n < 0:
            n = len(self._buf)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


class ClassicSource:
    compresses = True

    def __init__(self, docker: DockerAPI, ref: R.Reference, inspect: dict) -> None:
        self.docker = docker
        self.ref = ref
        self.config_digest: str = inspect["Id"]
        self.diff_ids: list[str] = list((inspect.get("RootFS") or {}).get("Layers") or [])
        self.description = f"docker (classic store) at {docker.host}"
        self.cache = cache_dir()
        self._small: dict[str, bytes] = {}  # synthesized manifests
        self._roots: dict[bool, Desc] = {}
        self._block_gzip: set[str] = set()  # layer blobs of BlockGzip's: a server's delta remakes them exactly
        self._lock = asyncio.Lock()
        self.compressed_layers = 0  # layers compressed by this run (0 when all came from the cache)
        self.root: Desc | None = None

    @classmethod
    async def open(cls, docker: DockerAPI, ref: R.Reference) -> "ClassicSource":
        inspect = await docker.image_inspect(ref.familiar)
        if inspect is None:
            raise NoSuchLocalImage(ref.familiar)
        return cls(docker, ref, inspect)

    # -- cache layout: blobs/sha256/<hex>, and layers/<zstd|bgzip>/<diffID hex> -> descriptor JSON --

    def _blob_path(self, digest: str) -> Path:
        return self.cache / "blobs" / "sha256" / D.hex_of(digest)

    def _map_path(self, diff_id: str, zstd: bool) -> Path:
        return self.cache / "layers" / ("zstd" if zstd else "bgzip") / D.hex_of(diff_id)

    def _cached_layer(self, diff_id: str, zstd: bool) -> Desc | None:
        try:
            d = json.loads(self._map_path(diff_id, zstd).read_text())
            desc = Desc(d["mediaType"], d["digest"], int(d["size"]))
        except (OSError, ValueError, KeyError):
            return None
        p = self._blob_path(desc.digest)
        return desc if p.exists() and p.stat().st_size == desc.size else None

    async def resolve(self, zstd: bool) -> Desc:
        """The manifest of compressed layers for this image, exporting and compressing what the
        cache lacks."""
        async with self._lock:
            if zstd in self._roots:
                return self._roots[zstd]
            loop = asyncio.get_running_loop()
            layers = await loop.run_in_executor(None, lambda: [self._cached_layer(d, zstd) for d in self.diff_ids])
            config_ok = self._blob_path(self.config_digest).exists()
            if not config_ok or any(l is None for l in layers):
                await self._export(zstd, {d for d, l in zip(self.diff_ids, layers) if l is None})
                layers = [self._cached_layer(d, zstd) for d in self.diff_ids]
                if any(l is None for l in layers) or not self._blob_path(self.config_digest).exists():
                    raise PusshError(f"docker save of {self.ref.familiar} lacked some of its layers")
            config_size = self._blob_path(self.config_digest).stat().st_size
            manifest = {"schemaVersion": 2, "mediaType": MT.OCI_MANIFEST,
                        "config": {"mediaType": MT.OCI_CONFIG, "digest": self.config_digest, "size": config_size},
                        "layers": [l.to_json() for l in layers if l is not None]}
            body = json.dumps(manifest, separators=(",", ":")).encode()
            root = Desc(MT.OCI_MANIFEST, D.of(body), len(body))
            self._small[root.digest] = body
            if not zstd:
                self._block_gzip.update(l.digest for l in layers if l is not None)
            self._roots[zstd] = root
            self.root = root
            return root

    async def _export(self, zstd: bool, wanted: set[str]) -> None:
        loop = asyncio.get_running_loop()
        stream = self.docker.export(self.ref.familiar)
        reader = _ThreadReader(stream.__aiter__(), loop)
        try:
            await loop.run_in_executor(None, self._read_save_tar, reader, zstd, wanted)
        finally:
            await stream.aclose()

    def _read_save_tar(self, reader: _ThreadReader, zstd: bool, wanted: set[str]) -> None:
        """Runs on a worker thread: walk the docker-save tar once, keeping the config and compressing
        the wanted layers (recognized by name, or by their content's digest in the legacy layout)."""
        (self.cache / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        self._map_path(self.config_digest, zstd).parent.mkdir(parents=True, exist_ok=True)
        config_hex = D.hex_of(self.config_digest)
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                if not member.isfile():
                    continue
                m = _BLOB_NAME.match(member.name)
                hexname = m.group(1) if m else None
                f = tar.extractfile(member)
                if f is None:
                    continue
                if hexname == config_hex or member.name == f"{config_hex}.json":
                    data = f.read()
                    if D.of(data) == self.config_digest:
                        _atomic_write(self._blob_path(self.config_digest), data)
                elif (hexname and f"sha256:{hexname}" in wanted) or (not m and member.name.endswith("/layer.tar")):
                    self._compress_layer(f, zstd, wanted)

    def _compress_layer(self, f, zstd: bool, wanted: set[str]) -> None:
        comp = _Compressor(zstd)
        raw, packed = hashlib.sha256(), hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.cache / "blobs", prefix=".partial-")
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = f.read(4 << 20)
                    if not chunk:
                        break
                    raw.update(chunk)
                    data = comp.compress(chunk)
                    if data:
                        packed.update(data)
                        out.write(data)
                        size += len(data)
                data = comp.flush()
                packed.update(data)
                out.write(data)
                size += len(data)
            diff_id = "sha256:" + raw.hexdigest()
            if diff_id not in wanted:
                return  # a legacy-layout layer this image does not need, or already cached
            digest = "sha256:" + packed.hexdigest()
            os.replace(tmp, self._blob_path(digest))
            tmp = ""
            desc = {"mediaType": MT.OCI_LAYER_ZSTD if zstd else MT.OCI_LAYER_GZIP, "digest": digest, "size": size}
            _atomic_write(self._map_path(diff_id, zstd), json.dumps(desc).encode())
            self.compressed_layers += 1
        finally:
            comp.abort()  # (its threads, after an error)
            if tmp:
                os.unlink(tmp)

    # -- ImageSource ------------------------------------------------------------------------------

    def rebuildable(self, layer: Desc) -> bool:
        return layer.digest in self._block_gzip

    async def read_small(self, digest: str) -> bytes:
        if digest in self._small:
            return self._small[digest]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._blob_path(digest).read_bytes)

    async def has(self, digest: str) -> bool:
        return digest in self._small or self._blob_path(digest).exists()

    def opener(self, digest: str) -> Source:
        path = str(self._blob_path(digest))

        def source(offset: int) -> AsyncIterator[bytes]:
            return read_file(path, offset)
        return source

    async def close(self) -> None:
        await self.docker.close()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
