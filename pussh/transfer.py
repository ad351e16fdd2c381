"""Bring the registry image to a server that lacks it: `docker save` from the local Engine API,
streamed into `docker load` over SSH, with a progress bar. Used once per server."""
from __future__ import annotations

import shlex

from .dockerapi import DockerAPI, DockerError
from .errors import PusshError
from .progress import UI
from .remote import Server, image_id
from .ssh import Connection
from .sshlib import asyncssh


async def send_registry_image(conn: Connection, server: Server, image: str, ui: UI) -> None:
    docker = DockerAPI()
    try:
        try:
            info = await docker.image_inspect(image)
        except DockerError:
            info = None
        if info is None:
            raise PusshError(f"{conn.label}: the registry image {image} is neither on the server nor on this machine; "
                             f"build it (docker build -t {image} . in the pussh source tree) or pass --registry-image")
        ui.line(f"{conn.label}: sending the registry image {image} (once per server)")
        bar = ui.bar(f"{conn.label} registry image", int(info.get("Size") or 0))
        proc = await conn.conn.create_process(shlex.join([*server.docker, "load", "-q"]), encoding=None,
                                              stderr=asyncssh.STDOUT)
        try:
            try:
                async for chunk in docker.export(image):
                    proc.stdin.write(chunk)
                    await proc.stdin.drain()
                    bar.advance(len(chunk))
                proc.stdin.write_eof()
            except (BrokenPipeError, ConnectionError, asyncssh.Error):
                pass  # docker load stopped reading: its output below says why
            out = (await proc.stdout.read()).decode(errors="replace")
            await proc.wait_closed()
        finally:
            proc.close()
        if proc.exit_status != 0:
            last = (out.strip().splitlines() or ["no output"])[-1]
            if "no space left" in out.lower():
                raise PusshError(f"{conn.label}: the server's disk is full (loading the registry image: {last})")
            raise PusshError(f"{conn.label}: docker load of the registry image failed: {last}")
        bar.finish("sent")
    finally:
        await docker.close()
    if await image_id(conn, server, image) is None:
        raise PusshError(f"{conn.label}: the registry image {image} was loaded but the server does not list it")
