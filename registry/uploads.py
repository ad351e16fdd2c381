"""Blob uploads, `/v2/<name>/blobs/uploads/[<id>]`: POST (start, mount, or single request with
`?digest=`), PATCH (chunked with Content-Range, or streamed without), PUT (finish), GET
(status), DELETE (cancel). The body goes straight into the upload's containerd ingest."""
from __future__ import annotations

import re

from aiohttp import web

from . import errors as E
from .http import batched, blob_digest, empty, param, storage

_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def _location(name: str, upload_id: str) -> str:
    # Relative: correct whatever host and port the client reached us by (SSH tunnels, proxies).
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _progress(name: str, upload_id: str, offset: int) -> dict[str, str]:
    return {
        "Location": _location(name, upload_id),
        "Range": f"0-{max(offset - 1, 0)}",
        "Docker-Upload-UUID": upload_id,
    }


def _created(name: str, digest: str) -> web.Response:
    return empty(201, {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})


def _has_body(request: web.Request) -> bool:
    return request.body_exists and request.content_length != 0


async def start(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    st = storage(request)
    mount = request.query.get("mount")
    if mount is not None:
        digest = blob_digest(mount, what="mount digest")
        if await st.mount(digest) is not None:
            return _created(name, digest)
        # Not here: the spec says fall back to a regular upload session.
    digest_q = request.query.get("digest")
    if digest_q is not None:
        digest = blob_digest(digest_q)
        upload_id = await st.start_upload(name)
        chunks = batched(request.content) if _has_body(request) else None
        try:
            await st.finish_upload(upload_id, digest, chunks)
        except BaseException:
            await _quietly_cancel(st, upload_id)
            raise
        return _created(name, digest)
    upload_id = await st.start_upload(name)
    return empty(202, {**_progress(name, upload_id, 0), "OCI-Chunk-Min-Length": "0"})


async def _quietly_cancel(st, upload_id: str) -> None:
    try:
        await st.cancel_upload(upload_id)
    except Exception:
        pass


async def status(request: web.Request) -> web.StreamResponse:
    name, upload_id = param(request, "name"), param(request, "uuid")
    offset = await storage(request).upload_offset(upload_id)
    return empty(204, _progress(name, upload_id, offset))


def _chunk_range(request: web.Request) -> tuple[int | None, int | None]:
    header = request.headers.get("Content-Range")
    if header is None:
        return None, None  # a streamed PATCH (Docker's classic push): append the whole body
    m = _CONTENT_RANGE.match(header.strip())
    if not m:
        raise E.range_invalid(f"invalid Content-Range {header!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise E.range_invalid(f"invalid Content-Range {header!r}")
    length = end - start + 1
    if request.content_length is not None and request.content_length != length:
        raise E.size_invalid(f"Content-Length {request.content_length} does not match Content-Range {header!r}")
    return start, length


async def patch(request: web.Request) -> web.StreamResponse:
    name, upload_id = param(request, "name"), param(request, "uuid")
    start, length = _chunk_range(request)
    st = storage(request)
    if start is not None:
        offset = await st.upload_offset(upload_id)
        if start != offset:  # checked again under the upload's lock; this one spares the body
            raise E.range_invalid(f"chunk starts at {start}, upload is at {offset}",
                                  upload_range=f"0-{max(offset - 1, 0)}")
    offset = await st.append(upload_id, batched(request.content), start, length)
    return empty(202, _progress(name, upload_id, offset))


async def finish(request: web.Request) -> web.StreamResponse:
    name, upload_id = param(request, "name"), param(request, "uuid")
    digest = blob_digest(request.query.get("digest"))
    start, length = _chunk_range(request)  # a last chunk may come with the PUT
    chunks = batched(request.content) if _has_body(request) else None
    await storage(request).finish_upload(upload_id, digest, chunks, start, length)
    return _created(name, digest)


async def cancel(request: web.Request) -> web.StreamResponse:
    await storage(request).cancel_upload(param(request, "uuid"))
    return empty(204, {})
