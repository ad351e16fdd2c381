"""SSH targets from the command line: `[user@]host[:port]`, `user@[v6addr]:port`, `ssh://user@host:port`."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import UsageError

_HOSTNAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\Z")
_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]*\Z")


@dataclass(frozen=True)
class Target:
    host: str  # hostname, ~/.ssh/config alias or IP address (IPv6 without brackets)
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        out = f"{self.user}@{host}" if self.user else host
        return f"{out}:{self.port}" if self.port is not None else out


def _port(text: str, raw: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"invalid port in target {raw!r}: {text!r}")
    return int(text)


def parse_target(raw: str) -> Target:
    """Parse one host argument. A bare IPv6 address needs no brackets unless a port follows."""
    text = raw.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://"):].rstrip("/")
        if "/" in text:
            raise UsageError(f"invalid target {raw!r}: an ssh:// target has no path")
    if not text:
        raise UsageError("empty target: give [USER@]HOST[:PORT]")
    user = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user or not _USER.match(user):
            raise UsageError(f"invalid user in target {raw!r}")
    port = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise UsageError(f"invalid target {raw!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"invalid target {raw!r}")
            port = _port(rest[1:], raw)
        _check_ip6(host, raw)
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address
        _check_ip6(host, raw)
    else:
        host, sep, port_text = text.partition(":")
        if sep:
            port = _port(port_text, raw)
        if not _HOSTNAME.match(host):
            raise UsageError(f"invalid host in target {raw!r}")
    return Target(host, user, port)


def _check_ip6(host: str, raw: str) -> None:
    try:
        ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        raise UsageError(f"invalid IPv6 address in target {raw!r}") from None
