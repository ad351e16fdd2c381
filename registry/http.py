"""Small HTTP helpers shared by the handler modules: the route's parameters, body batching,
query parsing, common reply headers."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from oci import digest as D

from . import errors as E

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
# Body bytes gathered into one containerd WRITE message. 8 MiB is the fastest for a lone gRPC
# writer, but each upload in flight holds about two batches: at 4 MiB, four concurrent 1 GB uploads
# peak near 100 MB RSS (150 MB at 8 MiB) for the same throughput (benchmarks/registry_throughput.py).
BATCH = 4 << 20


# Where the dispatcher leaves the route's parameters on the request.
ROUTE = web.RequestKey("route", dict) if hasattr(web, "RequestKey") else "route"


def param(request: web.Request, key: str) -> str:
    return request[ROUTE][key]


def storage(request: web.Request):
    from .app import STORAGE  # the app module wires storage; handlers only look it up

    return request.app[STORAGE]


async def batched(stream: Any, size: int = BATCH) -> AsyncIterator[list[bytes]]:
    """Re-chunk a request body (a StreamReader) into batches of about `size` bytes, as lists of
    the pieces read (the write joins them into its message in one copy); at most one batch is
    held: never the whole blob."""
    parts: list[bytes] = []
    have = 0
    async for data in stream.iter_any():
        parts.append(data)
        have += len(data)
        if have >= size:
            yield parts
            parts, have = [], 0
    if have:
        yield parts


def blob_digest(value: str | None, *, what: str = "digest") -> str:
    """A digest from the URL or query: DIGEST_INVALID when malformed, UNSUPPORTED for an
    algorithm containerd cannot verify (its content store hashes with sha256 only)."""
    if not value:
        raise E.digest_invalid(f"missing {what}")
    try:
        D.validate(value)
    except D.InvalidDigest as err:
        raise E.digest_invalid(str(err), detail={"digest": value}) from None
    if not value.startswith("sha256:"):
        raise E.UnsupportedDigest(value)
    return value


def page_size(request: web.Request) -> int | None:
    n = request.query.get("n")
    if n is None or n == "":
        return None
    try:
        value = int(n)
    except ValueError:
        value = -1
    if value < 0:
        raise E.RegistryError("PAGINATION_NUMBER_INVALID", 400, f"invalid number of results requested: {n!r}")
    return value


def paginate(items: list[str], request: web.Request, path: str, key: str) -> web.Response:
    """The spec's `n`/`last` pagination over a sorted list, with a `Link` to the next page."""
    last = request.query.get("last")
    if last:
        items = [i for i in items if i > last]
    n = page_size(request)
    headers = {}
    if n is not None:
        more = len(items) > n
        items = items[:n]
        if more and items:
            headers["Link"] = f'<{path}?n={n}&last={items[-1]}>; rel="next"'
    return web.json_response({**({"name": request[ROUTE]["name"]} if key == "tags" else {}), key: items},
                             headers=headers)


def empty(status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, headers={**headers, "Content-Length": "0"})
