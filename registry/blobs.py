"""Blobs: GET/HEAD (with Range) and DELETE of `/v2/<name>/blobs/<digest>`."""
from __future__ import annotations

import re

from aiohttp import web

from ctrd import errors as CE

from . import errors as E
from .http import blob_digest, empty, param, storage

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b`, `a-` or `-n` range as (start, end inclusive); None means: serve it all
    (a header we do not understand may be ignored, RFC 9110); raises 416 when unsatisfiable."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0:
            raise E.range_not_satisfiable(size)
        return max(size - n, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start > end or start >= size:
        raise E.range_not_satisfiable(size)
    return start, min(end, size - 1)


async def _stat(request: web.Request) -> tuple[str, int]:
    digest = blob_digest(param(request, "digest"))
    try:
        size = await storage(request).stat_blob(digest)
    except CE.InvalidArgument:
        size = None
    if size is None:
        raise E.blob_unknown(detail={"digest": digest})
    return digest, size


def _headers(digest: str, size: int) -> dict[str, str]:
    return {
        "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
        "Content-Length": str(size),
    }


async def head(request: web.Request) -> web.StreamResponse:
    digest, size = await _stat(request)
    return web.Response(status=200, headers=_headers(digest, size))


async def get(request: web.Request) -> web.StreamResponse:
    digest, size = await _stat(request)
    headers = _headers(digest, size)
    start, length, status = 0, size, 200
    if "Range" in request.headers:
        r = parse_range(request.headers["Range"], size)
        if r is not None:
            start, length, status = r[0], r[1] - r[0] + 1, 206
            headers["Content-Range"] = f"bytes {r[0]}-{r[1]}/{size}"
            headers["Content-Length"] = str(length)
    resp = web.StreamResponse(status=status, headers=headers)
    await resp.prepare(request)
    if length:
        # Streamed from containerd (the blob file itself when the content root is readable).
        async for chunk in storage(request).read_blob(digest, offset=start, size=length):
            await resp.write(chunk)
    await resp.write_eof()
    return resp


async def delete(request: web.Request) -> web.StreamResponse:
    digest = blob_digest(param(request, "digest"))
    await storage(request).delete_blob(digest)
    return empty(202, {"Docker-Content-Digest": digest})
