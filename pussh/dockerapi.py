"""A few calls of the local Docker Engine API (aiohttp over the unix socket; DOCKER_HOST honoured)."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from .errors import PusshError

DEFAULT_HOST = "unix:///var/run/docker.sock"
API = "/v1.41"  # Docker 20.10+; newer daemons answer older API versions


class DockerError(PusshError):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class DockerAPI:
    def __init__(self, host: str | None = None) -> None:
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        if self.host.startswith("unix://"):
            self._connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=self.host[len("unix://"):])
            self._base = "http://docker"
        elif self.host.startswith(("tcp://", "http://")):
            self._connector = aiohttp.TCPConnector()
            self._base = "http://" + self.host.split("://", 1)[1]
        else:
            raise PusshError(f"unsupported DOCKER_HOST {self.host!r}: use unix:///path or tcp://host:port")
        self._session = aiohttp.ClientSession(
            connector=self._connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )

    async def close(self) -> None:
        await self._session.close()

    async def _get_json(self, path: str) -> Any:
        try:
            async with self._session.get(self._base + API + path) as resp:
                if resp.status != 200:
                    raise DockerError(await self._message(resp), resp.status)
                return await resp.json()
        except aiohttp.ClientConnectorError as err:
            raise DockerError(f"cannot reach the local Docker daemon at {self.host}: {err.os_error}") from err

    @staticmethod
    async def _message(resp: aiohttp.ClientResponse) -> str:
        try:
            return (await resp.json()).get("message") or resp.reason or str(resp.status)
        except (ValueError, aiohttp.ContentTypeError):
            return (await resp.text()).strip() or str(resp.status)

    async def info(self) -> dict[str, Any]:
        return await self._get_json("/info")

    async def image_inspect(self, name: str) -> dict[str, Any] | None:
        try:
            return await self._get_json(f"/images/{quote(name, safe='')}/json")
        except DockerError as err:
            if err.status == 404:
                return None
            raise

    async def export(self, name: str, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
        """`docker save` of one image as a stream of tar bytes (never held in memory)."""
        async with self._session.get(self._base + API + f"/images/{quote(name, safe='')}/get") as resp:
            if resp.status != 200:
                raise DockerError(await self._message(resp), resp.status)
            async for data in resp.content.iter_chunked(chunk):
                yield data


    async def _post(self, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 204)) -> Any:
        async with self._session.post(self._base + API + path, json=body) as resp:
            if resp.status not in ok:
                raise DockerError(await self._message(resp), resp.status)
            return await resp.json() if resp.content_type == "application/json" else None

    async def run_detached(self, image: str, cmd: list[str], *, env: list[str], binds: list[str],
                           labels: dict[str, str], network: str = "host", user: str = "",
                           group_add: list[str] | None = None) -> str:
        """`docker run -d` through the API (the environment stays out of any argv); returns the ID."""
        created = await self._post("/containers/create", {
            "Image": image, "Cmd": cmd, "Env": env, "Labels": labels,
            "User": user,
            "HostConfig": {"Binds": binds, "NetworkMode": network, "AutoRemove": False,
                           "GroupAdd": group_add or None}})
        cid = created["Id"]
        try:
            await self._post(f"/containers/{cid}/start")
        except BaseException:
            await self.remove(cid)
            raise
        return cid

    async def follow_logs(self, cid: str) -> AsyncIterator[str]:
        """Lines of a container's stdout and stderr (non-TTY multiplexed stream), following."""
        url = self._base + API + f"/containers/{cid}/logs?follow=1&stdout=1&stderr=1"
        async with self._session.get(url) as resp:
            if resp.status != 200:
                raise DockerError(await self._message(resp), resp.status)
            buf = b""
            while True:
                try:
                    header = await resp.content.readexactly(8)
                    frame = await resp.content.readexactly(int.from_bytes(header[4:8], "big"))
                except asyncio.IncompleteReadError:
                    return
                buf += frame
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")

    async def remove(self, cid: str) -> None:
        async with self._session.delete(self._base + API + f"/containers/{cid}?force=1&v=1") as resp:
            if resp.status not in (204, 404):
                raise DockerError(await self._message(resp), resp.status)

