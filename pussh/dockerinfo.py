"""Docker Engine API GETs with the standard library: the local daemon's /info (which image store
Docker keeps), and, through an SSH forward, the server's /info and the ID an image name points at.
One HTTP/1.0 GET each, because importing aiohttp for them cost 130-200 ms of every push's start
(measured). Unversioned paths: a daemon serves them at its own API version, and Docker 29 refuses
old version prefixes. The other Engine API calls stay in dockerapi."""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import quote

SOCKET = "/var/run/docker.sock"
DEFAULT_HOST = f"unix://{SOCKET}"


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
              timeout: float = 10.0) -> tuple[int, Any] | None:
    """(status, parsed JSON body or None) of one GET on an open stream, which it closes; None when
    what answers is not an HTTP server. The reader and writer may be an SSH channel's."""
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())  # 1.0: the body ends at close
        raw = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if not head.startswith(b"HTTP/") or not status or not status[0].isdigit():
        return None
    try:
        return int(status[0]), json.loads(body)
    except ValueError:
        return int(status[0]), None


def image_path(name: str) -> str:
    return f"/images/{quote(name, safe='/:@')}/json"


async def docker_info(host: str | None = None, timeout: float = 10.0) -> dict[str, Any] | None:
    """Docker's info, or None when no Docker daemon answers at `host` (default $DOCKER_HOST)."""
    host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    try:
        if host.startswith("unix://"):
            opening = asyncio.open_unix_connection(host[len("unix://"):])
        elif host.startswith(("tcp://", "http://")):
            addr, _, port = host.split("://", 1)[1].rstrip("/").rpartition(":")
            opening = asyncio.open_connection(addr.strip("[]"), int(port))
        else:
            return None
        reader, writer = await asyncio.wait_for(opening, timeout)
    except (OSError, ValueError, asyncio.TimeoutError):
        return None
    got = await get(reader, writer, "/info", timeout)
    return got[1] if got and got[0] == 200 and isinstance(got[1], dict) else None


def uses_containerd_store(info: dict[str, Any]) -> bool:
    return any(k == "driver-type" and v == "io.containerd.snapshotter.v1" for k, v in info.get("DriverStatus") or [])
