"""The registry path, for users who may use Docker but not the containerd socket: the pussh registry
runs as a container on the server's loopback, and HTTP reaches it over SSH channels. It stores into
containerd as the direct path does (ctrd.imagestore)."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import aiohttp

from oci import manifest as M
from oci import reference as R

from .copy import Source
from .errors import ConnectionLost, Transient
from .source import repository_path
from .ssh import Connection
from .upload import Registry


class RegistryDestination:
    via = "registry"

    def __init__(self, reg: Registry, ref: R.Reference, conn: Connection) -> None:
        self.reg, self.ref, self.conn = reg, ref, conn

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            what = str(err) or type(err).__name__
            if not self.conn.is_open():
                raise ConnectionLost(f"{self.conn.label}: connection lost during the push ({what}); "
                                     "run it again to resume") from err
            raise Transient(f"{self.conn.label}: the registry on the server failed: {what}") from err

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, conn: Connection, port: int, token: str, ref: R.Reference, jobs: int, timeout: float,
                   relay: list[str] | None = None) -> AsyncIterator["RegistryDestination"]:
        """`relay`: a command whose stdio reaches the registry's port, where sshd forwards no TCP."""
        async with (conn.relay(relay) if relay else conn.tunnel(port)) as sock:
            connector = aiohttp.UnixConnector(path=sock, limit=max(jobs * 2, 8))
            client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=max(timeout, 120))
            async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
                yield cls(Registry(session, f"http://127.0.0.1:{port}", repository_path(ref), token, conn.label,
                                   alive=conn.is_open), ref, conn)

    async def missing(self, blobs: list[M.Desc]) -> list[M.Desc]:
        with self._mapped():
            present = await asyncio.gather(*(self.reg.has_blob(b.digest) for b in blobs))
        return [b for b, here in zip(blobs, present) if not here]

    async def write(self, desc: M.Desc, source: Source) -> int | None:
        with self._mapped():
            await self.reg.upload_blob(desc.digest, desc.size, source)
        return 0

    async def put_manifest(self, desc: M.Desc, body: bytes) -> None:
        with self._mapped():
            await self.reg.put_manifest(desc.digest, desc.media_type, body)

    async def tag(self, desc: M.Desc, body: bytes) -> None:
        with self._mapped():
            await self.reg.put_manifest(self.ref.tag or desc.digest, desc.media_type, body)
