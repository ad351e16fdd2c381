"""gRPC to the server's containerd straight over SSH direct-streamlocal channels: grpclib's HTTP/2
protocol runs on the channel itself, with no local socket in between (that hop cost a copy through
the kernel and a second pass through asyncssh for every byte, on a CPU-bound client)."""
from __future__ import annotations

from typing import Any

from grpclib.client import Channel
from grpclib.protocol import H2Protocol

from .sshlib import asyncssh


class _Session(asyncssh.SSHUNIXSession):
    """Feeds the channel's events to the HTTP/2 protocol; the channel is its transport (it has
    write, close, is_closing and get_extra_info, all that grpclib uses)."""

    def __init__(self, protocol: H2Protocol) -> None:
        self._protocol = protocol

    def connection_made(self, chan: Any) -> None:
        self._protocol.connection_made(chan)

    def data_received(self, data: bytes, datatype: Any) -> None:
        self._protocol.data_received(data)

    def eof_received(self) -> bool:
        return False  # the server ended its side: close the channel

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()


class SSHChannel(Channel):
    """A grpclib Channel whose connection is a direct-streamlocal channel to `remote_path`."""

    def __init__(self, conn: asyncssh.SSHClientConnection, remote_path: str, **kwargs: Any) -> None:
        super().__init__(path=remote_path, **kwargs)
        self._ssh = conn

    async def _create_connection(self) -> H2Protocol:
        protocol = self._protocol_factory()
        await self._ssh.create_unix_connection(lambda: _Session(protocol), self._path, encoding=None)
        return protocol
