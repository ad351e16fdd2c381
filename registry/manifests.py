"""Manifests, `/v2/<name>/manifests/<tag or digest>`: GET/HEAD/PUT/DELETE. Stored byte-exact;
OCI manifest and index, Docker schema 2 manifest and manifest list."""
from __future__ import annotations

from aiohttp import web

from . import errors as E
from .http import empty, param, storage
from .storage import MANIFEST_LIMIT, Manifest


def _headers(m: Manifest) -> dict[str, str]:
    return {"Content-Type": m.media_type, "Docker-Content-Digest": m.digest, "Content-Length": str(m.size),
            "ETag": f'"{m.digest}"'}


async def head(request: web.Request) -> web.StreamResponse:
    m = await storage(request).resolve(param(request, "name"), param(request, "reference"), with_body=False)
    return web.Response(status=200, headers=_headers(m))


async def get(request: web.Request) -> web.StreamResponse:
    m = await storage(request).resolve(param(request, "name"), param(request, "reference"), with_body=True)
    assert m.body is not None
    headers = _headers(m)
    del headers["Content-Length"]
    # content_type is passed apart so aiohttp does not append a charset to the media type.
    return web.Response(status=200, body=m.body, headers={k: v for k, v in headers.items() if k != "Content-Type"},
                        content_type=m.media_type)


async def _read_limited(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MANIFEST_LIMIT:
        raise E.manifest_too_large(MANIFEST_LIMIT)
    buf = bytearray()
    async for data in request.content.iter_any():
        buf += data
        if len(buf) > MANIFEST_LIMIT:
            raise E.manifest_too_large(MANIFEST_LIMIT)
    return bytes(buf)


async def put(request: web.Request) -> web.StreamResponse:
    name, reference = param(request, "name"), param(request, "reference")
    body = await _read_limited(request)
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip() or None
    m, subject = await storage(request).put_manifest(name, reference, body, content_type)
    headers = {"Location": f"/v2/{name}/manifests/{m.digest}", "Docker-Content-Digest": m.digest}
    if subject:
        headers["OCI-Subject"] = subject
    return empty(201, headers)


async def delete(request: web.Request) -> web.StreamResponse:
    await storage(request).delete_manifest(param(request, "name"), param(request, "reference"))
    return empty(202, {})
