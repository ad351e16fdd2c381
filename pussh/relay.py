"""For servers whose sshd forwards nothing (AllowTcpForwarding no, DisableForwarding yes): the same
bytes carried over the stdin/stdout of a command on the server that relays them to the socket.

The relay is a few lines of Python run with `python3 -c` (or the registry image's Python, inside
the registry container): every server that runs containers has one of the two, unlike socat or a
netcat that speaks unix sockets. One relay process per connection; gRPC multiplexes all blobs over
one connection, HTTP takes one per request in flight."""
from __future__ import annotations

# argv[1]: a unix socket path, or HOST:PORT. Copies stdin -> socket and socket -> stdout until
# either side ends; a half-close is passed on, so the peer sees EOF where the client sent it.
SCRIPT = r"""
import os, socket, sys, threading
a = sys.argv[1]
if a.startswith("/"):
    s = socket.socket(socket.AF_UNIX)
    s.connect(a)
else:
    h, p = a.rsplit(":", 1)
    s = socket.create_connection((h, int(p)))
def up():
    try:
        while True:
            b = os.read(0, 262144)
            if not b:
                break
            s.sendall(b)
    finally:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
threading.Thread(target=up, daemon=True).start()
while True:
    b = s.recv(262144)
    if not b:
        break
    v = memoryview(b)
    while v:
        v = v[os.write(1, v):]
"""


def command(python: str, address: str, prefix: tuple[str, ...] = ()) -> list[str]:
    """argv of the relay on the server: `prefix` (e.g. sudo -n, or docker exec -i CID) + python."""
    return [*prefix, python, "-c", SCRIPT, address]
