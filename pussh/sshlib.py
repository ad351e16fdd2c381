"""asyncssh, imported once for the whole client.

At import, asyncssh asks `ctypes.util.find_library` for liboqs (post-quantum key exchange), twice;
where liboqs is not installed (most machines) that runs ldconfig, gcc and ld as subprocesses: 20-30 ms
of every push's start (measured). A library the dynamic loader can find by name is in its cache
file or on LD_LIBRARY_PATH, so the question is answered from those first, and ctypes asked only when
the name is there."""
from __future__ import annotations

import ctypes.util
import glob
import os

_find_library = ctypes.util.find_library


def _loader_knows(name: str) -> bool:
    soname = f"lib{name.removeprefix('lib')}.so"
    try:
        with open("/etc/ld.so.cache", "rb") as f:
            if soname.encode() in f.read():
                return True
    except OSError:
        return True  # no cache file to ask: ctypes it is
    return any(glob.glob(os.path.join(d, soname + "*")) for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d)


def _find_library_quickly(name: str) -> str | None:
    return _find_library(name) if _loader_knows(name) else None


ctypes.util.find_library = _find_library_quickly
try:
    import asyncssh  # noqa: E402
finally:
    ctypes.util.find_library = _find_library

__all__ = ["asyncssh"]
