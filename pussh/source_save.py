"""The last resort for a containerd-store Docker whose containerd socket this user may not open and
whose registry image is not here either: `docker save` of the whole image through the Engine API,
unpacked blob by blob (an OCI layout) into a private temporary directory, served from there, and
deleted at the end."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from ctrd.content import read_file
from oci import digest as D
from oci import reference as R
from oci.manifest import Desc

from .dockerapi import DockerAPI
from .errors import NoSuchLocalImage, PusshError
from .source import AsStored
from .source_classic import _ThreadReader, cache_dir
from ctrd.content import Source

_BLOB = re.compile(r"^blobs/sha256/([a-f0-9]{64})$")


class SaveSource(AsStored):
    def __init__(self, docker: DockerAPI, ref: R.Reference, root: Desc, directory: Path) -> None:
        self.docker, self.ref, self.root, self.dir = docker, ref, root, directory
        self.description = "docker save (neither containerd's socket nor the registry image is usable here)"

    @classmethod
    async def open(cls, docker: DockerAPI, ref: R.Reference) -> "SaveSource":
        if await docker.image_inspect(ref.familiar) is None:
            raise NoSuchLocalImage(ref.familiar)
        base = cache_dir()
        base.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="save-", dir=base))  # 0700
        loop = asyncio.get_running_loop()
        stream = docker.export(ref.familiar)
        try:
            reader = _ThreadReader(stream.__aiter__(), loop)
            index = await loop.run_in_executor(None, _unpack, reader, directory)
            root = _root_of(index, ref)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            await stream.aclose()
        return cls(docker, ref, root, directory)

    def _path(self, digest: str) -> Path:
        return self.dir / D.hex_of(digest)

    async def resolve(self, zstd: bool) -> Desc:
        return self.root

    async def read_small(self, digest: str) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(None, self._path(digest).read_bytes)

    async def has(self, digest: str) -> bool:
        return self._path(digest).exists()

    def opener(self, digest: str) -> Source:
        path = str(self._path(digest))

        def source(offset: int) -> AsyncIterator[bytes]:
            return read_file(path, offset)
        return source

    async def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        await self.docker.close()


def _unpack(reader: _ThreadReader, directory: Path) -> dict:
    """Worker thread: every blob to directory/<hex> (verified), index.json returned."""
    import hashlib
    index: dict = {}
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            if not member.isfile():
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            if member.name == "index.json":
                index = json.loads(f.read())
                continue
            m = _BLOB.match(member.name)
            if not m:
                continue
            h = hashlib.sha256()
            tmp = directory / f".{m.group(1)}"
            with open(tmp, "wb") as out:
                for chunk in iter(lambda: f.read(4 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != m.group(1):
                os.unlink(tmp)
                raise PusshError(f"docker save gave a corrupt blob {member.name}")
            os.replace(tmp, directory / m.group(1))
    return index


def _root_of(index: dict, ref: R.Reference) -> Desc:
    manifests = index.get("manifests") or []
    for m in manifests:
        names = (m.get("annotations") or {})
        if ref.name in (names.get("io.containerd.image.name"), names.get("org.opencontainers.image.ref.name")):
            return Desc.from_json(m)
    if len(manifests) == 1:
        return Desc.from_json(manifests[0])
    raise PusshError(f"docker save of {ref.familiar} has no index entry for it")
