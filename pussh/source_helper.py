"""Local images for a user who may use Docker but not open containerd's socket (the docker group):
a short-lived local container of the registry image, with the socket mounted, serves the image's
blobs over HTTP on 127.0.0.1 (random port, random token); blobs are still read one by one, with
Range requests, never as a whole-image `docker save`."""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import AsyncIterator

import aiohttp

from oci import mediatypes as MT
from oci import reference as R
from oci.manifest import Desc

from .dockerapi import DockerAPI, DockerError
from .errors import NoSuchLocalImage, PusshError
from .source import AsStored
from ctrd.content import Source

READY_RE = re.compile(r"pussh-registry listening on http://127\.0\.0\.1:(\d+)")
LABEL = "pussh.helper"
ACCEPT = ", ".join(sorted(MT.ALL_MANIFESTS))


class NoHelperImage(PusshError):
    """The registry image is not in the local Docker."""


class HelperSource(AsStored):
    def __init__(self, docker: DockerAPI, cid: str, session: aiohttp.ClientSession, base: str, repo: str,
                 ref: R.Reference) -> None:
        self.docker, self.cid, self.session, self.base, self.repo, self.ref = docker, cid, session, base, repo, ref
        self.description = "a helper container of the registry image (containerd socket not readable by this user)"
        self.root: Desc | None = None
        self._small: dict[str, bytes] = {}

    @classmethod
    async def open(cls, docker: DockerAPI, ref: R.Reference, image: str, socket: str, namespace: str,
                   repo: str, timeout: float = 30.0) -> "HelperSource":
        token = secrets.token_urlsafe(32)
        # The image's unprivileged user gets the socket's group; root where this user cannot even stat it.
        try:
            gid: int | None = os.stat(socket).st_gid
        except OSError:
            gid = None
        try:
            cid = await docker.run_detached(
                image, ["--listen", "127.0.0.1:0", "--namespace", namespace],
                env=[f"PUSSH_REGISTRY_TOKEN={token}"], binds=[f"{socket}:/run/containerd/containerd.sock"],
                labels={LABEL: "1", "pussh.registry.created": str(int(time.time()))},
                user="0:0" if gid is None else "", group_add=None if gid is None else [str(gid)])
        except DockerError as err:
            if err.status == 404:
                raise NoHelperImage(f"the registry image {image} is not in the local Docker") from None
            raise
        session = None
        try:
            port = await asyncio.wait_for(cls._port(docker, cid), timeout)
            session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout))
            src = cls(docker, cid, session, f"http://127.0.0.1:{port}", repo, ref)
            await src._load_root()
            return src
        except BaseException:
            if session is not None:
                await session.close()
            await docker.remove(cid)
            raise

    @staticmethod
    async def _port(docker: DockerAPI, cid: str) -> int:
        seen: list[str] = []
        async for line in docker.follow_logs(cid):
            seen.append(line)
            m = READY_RE.search(line)
            if m:
                return int(m.group(1))
        raise PusshError(f"the local helper container exited: {' | '.join(seen[-3:]) or 'no output'}")

    async def _load_root(self) -> None:
        url = f"{self.base}/v2/{self.repo}/manifests/{self.ref.tag or self.ref.digest}"
        async with self.session.get(url, headers={"Accept": ACCEPT}) as resp:
            if resp.status == 404:
                raise NoSuchLocalImage(self.ref.familiar)
            if resp.status != 200:
                raise PusshError(f"local helper: reading {self.ref.familiar} failed: HTTP {resp.status}")
            body = await resp.read()
            digest = resp.headers["Docker-Content-Digest"]
            self.root = Desc(resp.content_type, digest, len(body))
            self._small[digest] = body

    async def resolve(self, zstd: bool) -> Desc:
        assert self.root is not None
        return self.root

    async def read_small(self, digest: str) -> bytes:
        if digest not in self._small:
            async with self.session.get(f"{self.base}/v2/{self.repo}/blobs/{digest}") as resp:
                if resp.status != 200:
                    raise PusshError(f"local helper: blob {digest} not readable: HTTP {resp.status}")
                self._small[digest] = await resp.read()
        return self._small[digest]

    async def has(self, digest: str) -> bool:
        if digest in self._small:
            return True
        async with self.session.head(f"{self.base}/v2/{self.repo}/blobs/{digest}") as resp:
            return resp.status == 200

    def opener(self, digest: str) -> Source:
        async def source(offset: int) -> AsyncIterator[bytes]:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            async with self.session.get(f"{self.base}/v2/{self.repo}/blobs/{digest}", headers=headers) as resp:
                if resp.status not in (200, 206):
                    raise PusshError(f"local helper: blob {digest} not readable: HTTP {resp.status}")
                async for chunk in resp.content.iter_chunked(1 << 20):
                    yield chunk
        return source

    async def close(self) -> None:
        await self.session.close()
        try:
            await self.docker.remove(self.cid)
        finally:
            await self.docker.close()
