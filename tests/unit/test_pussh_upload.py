"""The registry client against an in-process fake registry: chunked uploads, resume from the
registry's Range after a broken PATCH, a digest check at the end, a dead transport ends retries."""
from __future__ import annotations

import hashlib
import os

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pussh.upload import ConnectionLost, Registry, RegistryError

CHUNK = 64 << 10


class Fake:
    """Just enough of the distribution API, with hooks to misbehave."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, bytearray] = {}
        self.patches = 0
        self.break_patch_at: int | None = None  # the n-th PATCH keeps half its body, then fails
        self.received = 0
        self.full_disk = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("HEAD", "/v2/{repo:.+}/blobs/{digest}", self.head)
        app.router.add_post("/v2/{repo:.+}/blobs/uploads/", self.start)
        app.router.add_get("/v2/{repo:.+}/blobs/uploads/{id}", self.status)
        app.router.add_patch("/v2/{repo:.+}/blobs/uploads/{id}", self.patch)
        app.router.add_put("/v2/{repo:.+}/blobs/uploads/{id}", self.put)
        return app

    async def head(self, req):
        return web.Response(status=200 if req.match_info["digest"] in self.blobs else 404)

    async def start(self, req):
        uid = os.urandom(4).hex()
        self.uploads[uid] = bytearray()
        return web.Response(status=202, headers={"Location": f"/v2/{req.match_info['repo']}/blobs/uploads/{uid}"})

    def _range(self, uid):
        n = len(self.uploads[uid])
        return {"Range": f"0-{n - 1}" if n else "0-0"} if n else {}

    async def status(self, req):
        uid = req.match_info["id"]
        if uid not in self.uploads:
            return web.Response(status=404)
        return web.Response(status=204, headers=self._range(uid))

    async def patch(self, req):
        uid = req.match_info["id"]
        start = int(req.headers["Content-Range"].split("-")[0])
        if start != len(self.uploads[uid]):
            return web.Response(status=416, headers=self._range(uid))
        self.patches += 1
        body = await req.read()
        self.received += len(body)
        if self.full_disk:
            return web.json_response({"errors": [{"code": "UNKNOWN", "message": "write: no space left on device"}]},
                                     status=500)
        if self.patches == self.break_patch_at:
            self.uploads[uid] += body[: len(body) // 2]
            raise ConnectionResetError("simulated drop")  # aiohttp closes the connection
        self.uploads[uid] += body
        return web.Response(status=202, headers={"Location": str(req.rel_url.path), **self._range(uid)})

    async def put(self, req):
        uid = req.match_info["id"]
        body = await req.read()
        self.received += len(body)
        data = bytes(self.uploads.pop(uid)) + body
        digest = req.query["digest"]
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            return web.json_response({"errors": [{"code": "DIGEST_INVALID", "message": "mismatch"}]}, status=400)
        self.blobs[digest] = data
        return web.Response(status=201)


def source_of(data: bytes):
    async def source(offset: int):
        for i in range(offset, len(data), 10_000):
            yield data[i:i + 10_000]
    return source


@pytest.fixture
async def fake():
    f = Fake()
    server = TestServer(f.app(), host="127.0.0.1", port=0)
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        f.registry = lambda **kw: Registry(session, str(server.make_url("")), "library/app", "tok",
                                           chunk_size=CHUNK, **kw)
        yield f
    await server.close()


def blob(n: int) -> tuple[bytes, str]:
    data = os.urandom(n)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


async def test_small_blob_is_one_put(fake):
    data, digest = blob(1000)
    reg = fake.registry()
    assert not await reg.has_blob(digest)
    await reg.upload_blob(digest, len(data), source_of(data))
    assert fake.blobs[digest] == data and fake.patches == 0
    assert await reg.has_blob(digest)


async def test_chunked_upload_and_progress(fake):
    data, digest = blob(5 * CHUNK + 123)
    seen = []
    await fake.registry().upload_blob(digest, len(data), source_of(data), seen.append)
    assert fake.blobs[digest] == data
    assert fake.patches == 6
    assert sum(seen) == len(data)


async def test_resume_after_broken_patch_resends_only_the_rest(fake):
    data, digest = blob(4 * CHUNK)
    fake.break_patch_at = 3
    seen = []
    await fake.registry().upload_blob(digest, len(data), source_of(data), seen.append)
    assert fake.blobs[digest] == data
    assert sum(seen) == len(data)  # the progress was rewound to what the registry kept
    assert fake.patches == 5  # four chunks, the third twice
    assert fake.received < len(data) + CHUNK  # at most the broken chunk went twice


async def test_wrong_bytes_fail_the_digest_check(fake):
    data, digest = blob(3 * CHUNK)
    with pytest.raises(RegistryError, match="DIGEST_INVALID"):
        await fake.registry().upload_blob(digest, len(data), source_of(data[:-1] + b"x"))


async def test_full_disk_is_named(fake):
    data, digest = blob(2 * CHUNK)
    fake.full_disk = True
    with pytest.raises(RegistryError, match="disk is full"):
        await fake.registry().upload_blob(digest, len(data), source_of(data))


async def test_dead_transport_stops_retrying(fake):
    data, digest = blob(4 * CHUNK)
    fake.break_patch_at = 1
    with pytest.raises(ConnectionLost, match="run it again to resume"):
        await fake.registry(alive=lambda: False).upload_blob(digest, len(data), source_of(data))
    assert fake.patches == 1
