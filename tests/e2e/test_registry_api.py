"""The registry's HTTP API, endpoint by endpoint, against a real containerd (no mocks): every
request of the distribution spec v1.1 the registry serves, and every bad input with its status
and error code."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from datetime import timedelta
from itertools import count
from pathlib import Path

import pytest

from ctrd import Containerd, ContainerdError, NotFound, Unavailable
from ctrd.labels import DISTRIBUTION_SOURCE, GC_REF_CONTENT, UNCOMPRESSED
from oci import mediatypes as MT
from registry.storage import LABEL_MEDIA_TYPE, MANIFEST_LIMIT, UNTAGGED_LEASE
from regsupport import (bare_containerd, error_code, hand_image, index_of, serve, sha, wait_gone)

pytestmark = pytest.mark.e2e
_ns = count()


@pytest.fixture(scope="module")
def ctr_socket(tmp_path_factory):
    with bare_containerd(tmp_path_factory.mktemp("regapi")) as sock:
        yield sock


@pytest.fixture
def namespace() -> str:
    return f"regapi-{os.getpid()}-{next(_ns)}"


@pytest.fixture
async def reg(ctr_socket, namespace):
    async with serve(ctr_socket, namespace) as r:
        yield r


@pytest.fixture
async def ctr(ctr_socket, namespace):
    async with Containerd(ctr_socket, namespace=namespace) as c:
        yield c


async def push_image(reg, repo: str, tag: str, img) -> str:
    for blob in img.blobs():
        await reg.push_blob(repo, blob)
    return await reg.push_manifest(repo, tag, img.manifest)


# -- /v2/ ------------------------------------------------------------------------------------------

async def test_base(reg):
    status, headers, body = await reg.call("GET", "/v2/")
    assert status == 200 and json.loads(body) == {}
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_unknown_endpoint_and_method(reg):
    status, _, body = await reg.call("GET", "/v3/")
    assert status == 404
    status, headers, body = await reg.call("POST", "/v2/a/tags/list")
    assert status == 405 and error_code(body) == "UNSUPPORTED" and headers["Allow"] == "GET"


@pytest.mark.parametrize("name", ["Upper/case", "a//b", "-a", "a/-b", "x" * 256])
async def test_name_invalid(reg, name):
    for method, path in (("GET", f"/v2/{name}/tags/list"), ("POST", f"/v2/{name}/blobs/uploads/"),
                         ("GET", f"/v2/{name}/manifests/latest")):
        status, _, body = await reg.call(method, path)
        assert status == 400 and error_code(body) == "NAME_INVALID", (method, path, status, body)


# -- uploads ---------------------------------------------------------------------------------------

async def test_upload_post_then_put(reg, ctr):
    data = os.urandom(3 << 20)
    status, headers, _ = await reg.call("POST", "/v2/a/b/blobs/uploads/")
    assert status == 202
    location = headers["Location"]
    assert location.startswith("/v2/a/b/blobs/uploads/") and headers["Range"] == "0-0"
    assert headers["Docker-Upload-UUID"] in location
    status, headers, _ = await reg.call("PUT", f"{location}?digest={sha(data)}", data=data)
    assert status == 201
    assert headers["Docker-Content-Digest"] == sha(data) and headers["Location"] == f"/v2/a/b/blobs/{sha(data)}"
    assert (await ctr.content.info(sha(data))).size == len(data)
    status, headers, body = await reg.call("GET", f"/v2/a/b/blobs/{sha(data)}")
    assert status == 200 and body == data and headers["Docker-Content-Digest"] == sha(data)


async def test_upload_single_request(reg):
    data = os.urandom(1000)
    status, headers, _ = await reg.call("POST", f"/v2/single/blobs/uploads/?digest={sha(data)}", data=data)
    assert status == 201 and headers["Docker-Content-Digest"] == sha(data)
    status, headers, _ = await reg.call("HEAD", f"/v2/single/blobs/{sha(data)}")
    assert status == 200 and headers["Content-Length"] == "1000"


async def test_upload_chunked_with_status(reg):
    data = os.urandom(300_000)
    _, headers, _ = await reg.call("POST", "/v2/chunky/blobs/uploads/")
    loc = headers["Location"]
    for start, end in ((0, 99_999), (100_000, 249_999), (250_000, 299_999)):
        status, headers, _ = await reg.call("PATCH", loc, data=data[start:end + 1],
                                            headers={"Content-Range": f"{start}-{end}",
                                                     "Content-Type": "application/octet-stream"})
        assert status == 202 and headers["Range"] == f"0-{end}", headers
        loc = headers["Location"]
        status, headers, _ = await reg.call("GET", loc)
        assert status == 204 and headers["Range"] == f"0-{end}"
    status, headers, _ = await reg.call("PUT", f"{loc}?digest={sha(data)}")
    assert status == 201
    # the last chunk may ride on the PUT, with its Content-Range checked too
    more = os.urandom(1000)
    _, headers, _ = await reg.call("POST", "/v2/chunky/blobs/uploads/")
    loc = headers["Location"]
    await reg.call("PATCH", loc, data=more[:600], headers={"Content-Range": "0-599"})
    status, headers, body = await reg.call("PUT", f"{loc}?digest={sha(more)}", data=more[600:],
                                           headers={"Content-Range": "500-899"})
    assert status == 416 and error_code(body) == "BLOB_UPLOAD_INVALID" and headers["Range"] == "0-599"
    status, _, _ = await reg.call("PUT", f"{loc}?digest={sha(more)}", data=more[600:],
                                  headers={"Content-Range": "600-999"})
    assert status == 201
    _, _, body = await reg.call("GET", f"/v2/chunky/blobs/{sha(data)}")
    assert body == data


async def test_upload_out_of_order_chunk_is_416(reg):
    _, headers, _ = await reg.call("POST", "/v2/ooo/blobs/uploads/")
    loc = headers["Location"]
    status, headers, _ = await reg.call("PATCH", loc, data=b"x" * 10, headers={"Content-Range": "0-9"})
    assert status == 202
    status, headers, body = await reg.call("PATCH", loc, data=b"y" * 10, headers={"Content-Range": "20-29"})
    assert status == 416 and error_code(body) == "BLOB_UPLOAD_INVALID" and headers["Range"] == "0-9"
    # the upload goes on from where it stands
    status, headers, _ = await reg.call("PATCH", loc, data=b"y" * 10, headers={"Content-Range": "10-19"})
    assert status == 202 and headers["Range"] == "0-19"


async def test_upload_chunk_length_mismatch_is_size_invalid(reg):
    _, headers, _ = await reg.call("POST", "/v2/sizes/blobs/uploads/")
    status, _, body = await reg.call("PATCH", headers["Location"], data=b"x" * 10,
                                     headers={"Content-Range": "0-19"})
    assert status == 400 and error_code(body) == "SIZE_INVALID"


async def test_upload_bad_content_range(reg):
    _, headers, _ = await reg.call("POST", "/v2/badrange/blobs/uploads/")
    status, _, body = await reg.call("PATCH", headers["Location"], data=b"x", headers={"Content-Range": "bytes=a-b"})
    assert status == 416 and error_code(body) == "BLOB_UPLOAD_INVALID"


async def test_upload_streamed_patch(reg):
    """Docker's classic push: one PATCH without Content-Range, chunked transfer encoding, then an
    empty PUT."""
    data = os.urandom(20 << 20)

    async def body():
        for i in range(0, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]

    _, headers, _ = await reg.call("POST", "/v2/stream/blobs/uploads/")
    status, headers, _ = await reg.call("PATCH", headers["Location"], data=body())
    assert status == 202 and headers["Range"] == f"0-{len(data) - 1}"
    status, headers, _ = await reg.call("PUT", f"{headers['Location']}?digest={sha(data)}")
    assert status == 201
    status, headers, _ = await reg.call("HEAD", f"/v2/stream/blobs/{sha(data)}")
    assert int(headers["Content-Length"]) == len(data)


async def test_upload_digest_mismatch(reg, ctr):
    data = os.urandom(5000)
    _, headers, _ = await reg.call("POST", "/v2/mismatch/blobs/uploads/")
    loc = headers["Location"]
    wrong = sha(b"something else")
    status, _, body = await reg.call("PUT", f"{loc}?digest={wrong}", data=data)
    assert status == 400 and error_code(body) == "DIGEST_INVALID"
    assert await ctr.content.exists(wrong) is None and await ctr.content.exists(sha(data)) is None
    status, _, body = await reg.call("GET", loc)
    assert status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize("digest,code", [("", "DIGEST_INVALID"), ("sha256:abc", "DIGEST_INVALID"),
                                         ("nope", "DIGEST_INVALID"), ("sha512:" + "a" * 128, "UNSUPPORTED")])
async def test_upload_put_invalid_digest(reg, digest, code):
    _, headers, _ = await reg.call("POST", "/v2/d/blobs/uploads/")
    query = f"?digest={digest}" if digest else ""
    status, _, body = await reg.call("PUT", headers["Location"] + query, data=b"abc")
    assert status == 400 and error_code(body) == code


async def test_upload_cancel(reg, ctr):
    _, headers, _ = await reg.call("POST", "/v2/cancel/blobs/uploads/")
    loc = headers["Location"]
    await reg.call("PATCH", loc, data=b"z" * 100, headers={"Content-Range": "0-99"})
    status, _, _ = await reg.call("DELETE", loc)
    assert status == 204
    status, _, body = await reg.call("GET", loc)
    assert status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN"
    assert [s for s in await ctr.content.list_statuses() if s.ref.endswith(headers["Docker-Upload-UUID"])] == []
    status, _, body = await reg.call("DELETE", loc)
    assert status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize("upload_id", ["0" * 32, "not-an-id", "..%2F..%2Fetc"])
async def test_upload_unknown(reg, upload_id):
    loc = f"/v2/u/blobs/uploads/{upload_id}"
    for method, kw in (("GET", {}), ("PATCH", {"data": b"x"}), ("PUT", {"data": b"x"}), ("DELETE", {})):
        query = f"?digest={sha(b'x')}" if method == "PUT" else ""
        status, _, body = await reg.call(method, loc + query, **kw)
        assert status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN", (method, status, body)


async def test_mount(reg):
    data = os.urandom(777)
    await reg.push_blob("from/repo", data)
    status, headers, _ = await reg.call("POST", f"/v2/to/repo/blobs/uploads/?mount={sha(data)}&from=from/repo")
    assert status == 201 and headers["Location"] == f"/v2/to/repo/blobs/{sha(data)}"
    assert headers["Docker-Content-Digest"] == sha(data)
    # not present: the spec's fallback is a regular upload session
    status, headers, _ = await reg.call("POST", f"/v2/to/repo/blobs/uploads/?mount={sha(b'absent')}&from=from/repo")
    assert status == 202 and "/blobs/uploads/" in headers["Location"]
    status, _, body = await reg.call("POST", "/v2/to/repo/blobs/uploads/?mount=bogus&from=x")
    assert status == 400 and error_code(body) == "DIGEST_INVALID"


async def test_concurrent_uploads_of_one_blob(reg):
    data = os.urandom(12 << 20)

    async def upload(chunked: bool):
        _, headers, _ = await reg.call("POST", "/v2/race/blobs/uploads/")
        loc = headers["Location"]
        if chunked:
            half = len(data) // 2
            s, headers, _ = await reg.call("PATCH", loc, data=data[:half], headers={"Content-Range": f"0-{half - 1}"})
            assert s == 202
            s, headers, _ = await reg.call("PATCH", headers["Location"], data=data[half:],
                                           headers={"Content-Range": f"{half}-{len(data) - 1}"})
            assert s == 202
            return (await reg.call("PUT", f"{headers['Location']}?digest={sha(data)}"))[0]
        return (await reg.call("PUT", f"{loc}?digest={sha(data)}", data=data))[0]

    assert await asyncio.gather(upload(True), upload(False), upload(True), upload(False)) == [201] * 4


async def test_abandoned_upload_is_collected(ctr_socket, namespace, ctr):
    async with serve(ctr_socket, namespace, upload_expiry=timedelta(seconds=1)) as reg:
        _, headers, _ = await reg.call("POST", "/v2/gone/blobs/uploads/")
        uid = headers["Docker-Upload-UUID"]
        status, _, _ = await reg.call("PATCH", headers["Location"], data=os.urandom(4096),
                                      headers={"Content-Range": "0-4095"})
        assert status == 202
        assert [s.offset for s in await ctr.content.list_statuses() if uid in s.ref] == [4096]
        await asyncio.sleep(1.5)

        async def gone() -> bool:
            await ctr.leases.collect_garbage()
            return not [s for s in await ctr.content.list_statuses() if uid in s.ref]

        assert await wait_gone(gone)
        assert uid not in [lease.id for lease in await ctr.leases.list()]
        status, _, body = await reg.call("GET", headers["Location"])
        assert status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN"


# -- blobs -----------------------------------------------------------------------------------------

async def test_blob_get_head_range(reg):
    data = os.urandom(10_000)
    digest = await reg.push_blob("r", data)
    status, headers, body = await reg.call("HEAD", f"/v2/r/blobs/{digest}")
    assert status == 200 and body == b"" and headers["Content-Length"] == "10000"
    assert headers["Accept-Ranges"] == "bytes" and headers["Docker-Content-Digest"] == digest
    for rng, start, end in (("bytes=10-19", 10, 19), ("bytes=9990-", 9990, 9999), ("bytes=-5", 9995, 9999),
                            ("bytes=9000-20000", 9000, 9999)):
        status, headers, body = await reg.call("GET", f"/v2/r/blobs/{digest}", headers={"Range": rng})
        assert status == 206 and body == data[start:end + 1], rng
        assert headers["Content-Range"] == f"bytes {start}-{end}/10000"
    status, headers, body = await reg.call("GET", f"/v2/r/blobs/{digest}", headers={"Range": "bytes=10000-"})
    assert status == 416 and headers["Content-Range"] == "bytes */10000"


async def test_blob_unknown_and_invalid(reg):
    missing = sha(b"missing")
    status, _, body = await reg.call("GET", f"/v2/r/blobs/{missing}")
    assert status == 404 and error_code(body) == "BLOB_UNKNOWN"
    status, _, body = await reg.call("HEAD", f"/v2/r/blobs/{missing}")
    assert status == 404 and body == b""
    status, _, body = await reg.call("GET", "/v2/r/blobs/sha256:zzz")
    assert status == 400 and error_code(body) == "DIGEST_INVALID"
    status, _, body = await reg.call("DELETE", f"/v2/r/blobs/{missing}")
    assert status == 404 and error_code(body) == "BLOB_UNKNOWN"


async def test_blob_delete(reg, ctr):
    digest = await reg.push_blob("del", b"delete me")
    status, _, _ = await reg.call("DELETE", f"/v2/del/blobs/{digest}")
    assert status == 202
    assert await ctr.content.exists(digest) is None
    status, _, _ = await reg.call("HEAD", f"/v2/del/blobs/{digest}")
    assert status == 404
    # a layer of a tagged image stays (the store is the host's): the spec's 405 for a deletion the
    # registry will not do, naming the image that needs it
    img = hand_image("inuse")
    await push_image(reg, "del", "1", img)
    for blob in (img.layers[0], img.config):
        status, headers, body = await reg.call("DELETE", f"/v2/del/blobs/{sha(blob)}")
        assert status == 405 and error_code(body) == "UNSUPPORTED" and headers["Allow"] == "GET, HEAD", body
        assert "docker.io/library/del:1" in json.loads(body)["errors"][0]["message"]
        assert await ctr.content.exists(sha(blob)) is not None
    # a manifest kept untagged (pushed by digest) keeps its blobs too, and is named
    other = hand_image("inuse-untagged")
    await push_image(reg, "del", other.digest, other)
    status, _, body = await reg.call("DELETE", f"/v2/del/blobs/{sha(other.layers[1])}")
    assert status == 405 and error_code(body) == "UNSUPPORTED"
    assert other.digest in json.loads(body)["errors"][0]["message"]
    # once no image needs it, the blob goes
    assert (await reg.call("DELETE", f"/v2/del/manifests/{img.digest}"))[0] == 202
    status, _, _ = await reg.call("DELETE", f"/v2/del/blobs/{sha(img.layers[0])}")
    assert status == 202 and await ctr.content.exists(sha(img.layers[0])) is None


# -- manifests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
async def test_manifest_put_get_by_tag_and_digest(reg, ctr, docker):
    img = hand_image("m", docker=docker)
    digest = await push_image(reg, "myapp", "1", img)
    for ref in ("1", digest):
        status, headers, body = await reg.call("GET", f"/v2/myapp/manifests/{ref}")
        assert status == 200 and body == img.body  # byte-exact
        assert headers["Content-Type"] == img.media_type and headers["Docker-Content-Digest"] == digest
        status, headers, body = await reg.call("HEAD", f"/v2/myapp/manifests/{ref}")
        assert status == 200 and body == b"" and headers["Content-Length"] == str(len(img.body))
        assert headers["Content-Type"] == img.media_type
    # the tag is an image of this host, named as Docker names it
    image = await ctr.images.get("docker.io/library/myapp:1")
    assert image.target.digest == digest and image.target.media_type == img.media_type
    labels = (await ctr.content.info(digest)).labels
    assert labels[f"{GC_REF_CONTENT}.config"] == sha(img.config)
    assert labels[f"{GC_REF_CONTENT}.l.1"] == sha(img.layers[1])
    assert labels[LABEL_MEDIA_TYPE] == img.media_type
    for layer, diff_id in zip(img.layers, img.diff_ids):
        info = await ctr.content.info(sha(layer))
        assert info.labels[UNCOMPRESSED] == diff_id
        assert info.labels[f"{DISTRIBUTION_SOURCE}.docker.io"] == "library/myapp"


async def test_manifest_name_with_domain(reg, ctr):
    img = hand_image("ghcr")
    digest = await push_image(reg, "ghcr.io/x/y", "v2", img)
    assert (await ctr.images.get("ghcr.io/x/y:v2")).target.digest == digest
    assert (await ctr.content.info(sha(img.layers[0]))).labels[f"{DISTRIBUTION_SOURCE}.ghcr.io"] == "x/y"
    status, _, body = await reg.call("GET", "/v2/ghcr.io/x/y/tags/list")
    assert json.loads(body) == {"name": "ghcr.io/x/y", "tags": ["v2"]}


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-list"])
async def test_index_pushed_and_pulled_back(reg, ctr, docker):
    images = {"amd64": hand_image("a", docker=docker), "arm64": hand_image("b", docker=docker, arch="arm64")}
    for img in images.values():
        for blob in img.blobs():
            await reg.push_blob("multi", blob)
        await reg.push_manifest("multi", img.digest, img.manifest)  # children by digest
    index = index_of(images, docker=docker)
    digest = await reg.push_manifest("multi", "latest", index)
    status, headers, body = await reg.call("GET", "/v2/multi/manifests/latest")
    assert body == json.dumps(index).encode() and headers["Content-Type"] == index["mediaType"]
    for img in images.values():
        status, headers, body = await reg.call("GET", f"/v2/multi/manifests/{img.digest}")
        assert status == 200 and body == img.body and headers["Content-Type"] == img.media_type
    labels = (await ctr.content.info(digest)).labels
    assert {labels[f"{GC_REF_CONTENT}.m.{i}"] for i in range(2)} == {i.digest for i in images.values()}


async def test_manifest_blob_unknown_is_not_tagged(reg, ctr):
    img = hand_image("partial")
    await reg.push_blob("partial", img.config)
    await reg.push_blob("partial", img.layers[0])  # the second layer never comes
    status, _, body = await reg.call("PUT", "/v2/partial/manifests/1", data=img.body,
                                     headers={"Content-Type": img.media_type})
    assert status == 400 and error_code(body) == "MANIFEST_BLOB_UNKNOWN"
    assert json.loads(body)["errors"][0]["detail"]["digest"] == sha(img.layers[1])
    assert await ctr.images.list() == []
    status, _, body = await reg.call("GET", "/v2/partial/manifests/1")
    assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN"
    # an index whose child manifest is missing
    index = index_of({"amd64": img})
    status, _, body = await reg.call("PUT", "/v2/partial/manifests/idx", data=json.dumps(index).encode(),
                                     headers={"Content-Type": MT.OCI_INDEX})
    assert status == 400 and error_code(body) == "MANIFEST_BLOB_UNKNOWN"


@pytest.mark.parametrize("body,content_type", [
    (b"not json", MT.OCI_MANIFEST),
    (b"[1, 2]", MT.OCI_MANIFEST),
    (json.dumps({"schemaVersion": 1, "mediaType": MT.OCI_MANIFEST}).encode(), MT.OCI_MANIFEST),
    (json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_MANIFEST, "layers": []}).encode(), MT.OCI_MANIFEST),
    (json.dumps({"schemaVersion": 2, "mediaType": "application/x-unknown"}).encode(), "application/x-unknown"),
    (json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_INDEX, "manifests": [{"digest": 5}]}).encode(), MT.OCI_INDEX),
    (json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_MANIFEST,
                 "config": {"mediaType": MT.OCI_CONFIG, "digest": "sha256:xyz", "size": 1}, "layers": []}).encode(),
     MT.OCI_MANIFEST),
    (json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_INDEX, "manifests": []}).encode(), MT.OCI_MANIFEST),
], ids=["json", "array", "schema1", "no-config", "media-type", "descriptor", "digest", "type-mismatch"])
async def test_manifest_invalid(reg, body, content_type):
    status, _, resp = await reg.call("PUT", "/v2/bad/manifests/1", data=body, headers={"Content-Type": content_type})
    assert status == 400 and error_code(resp) == "MANIFEST_INVALID", resp


async def test_manifest_descriptor_size_mismatch(reg):
    img = hand_image("size")
    for blob in img.blobs():
        await reg.push_blob("size", blob)
    img.manifest["layers"][0]["size"] += 1
    status, _, body = await reg.call("PUT", "/v2/size/manifests/1", data=img.body,
                                     headers={"Content-Type": img.media_type})
    assert status == 400 and error_code(body) == "MANIFEST_INVALID"


async def test_manifest_too_large_is_413(reg):
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * MANIFEST_LIMIT + b'"}'
    status, _, resp = await reg.call("PUT", "/v2/big/manifests/1", data=body, headers={"Content-Type": MT.OCI_MANIFEST})
    assert status == 413 and error_code(resp) == "MANIFEST_INVALID"

    async def streamed():  # no Content-Length: the limit holds while reading
        yield body

    status, _, resp = await reg.call("PUT", "/v2/big/manifests/1", data=streamed(),
                                     headers={"Content-Type": MT.OCI_MANIFEST})
    assert status == 413


async def test_manifest_digest_mismatch_and_bad_reference(reg):
    img = hand_image("dm")
    for blob in img.blobs():
        await reg.push_blob("dm", blob)
    status, _, body = await reg.call("PUT", f"/v2/dm/manifests/{sha(b'other')}", data=img.body,
                                     headers={"Content-Type": img.media_type})
    assert status == 400 and error_code(body) == "DIGEST_INVALID"
    status, _, body = await reg.call("PUT", "/v2/dm/manifests/sha256:short", data=img.body,
                                     headers={"Content-Type": img.media_type})
    assert status == 400 and error_code(body) == "DIGEST_INVALID"
    status, _, body = await reg.call("PUT", "/v2/dm/manifests/.bad-tag", data=img.body,
                                     headers={"Content-Type": img.media_type})
    assert status == 400 and error_code(body) == "MANIFEST_INVALID"


@pytest.mark.parametrize("ref", [".bad-tag", "-x", "a" * 129, "t:t", "sha256:short", "SHA256:" + "A" * 64,
                                 "md5:" + "0" * 32, "sha512:" + "a" * 128, "sha256:" + "0" * 63])
async def test_manifest_lookup_by_impossible_reference_is_unknown(reg, ref):
    """GET/HEAD by a reference that is neither a valid tag nor a digest this store can hold: it
    cannot exist, so it is unknown (404), not a bad request; a PUT of it is still refused (400)."""
    status, _, body = await reg.call("GET", f"/v2/unknown/manifests/{ref}")
    assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN", body
    status, _, body = await reg.call("HEAD", f"/v2/unknown/manifests/{ref}")
    assert status == 404 and body == b""
    img = hand_image("impossible")
    status, _, body = await reg.call("PUT", f"/v2/unknown/manifests/{ref}", data=img.body,
                                     headers={"Content-Type": img.media_type})
    assert status == 400 and error_code(body) in ("MANIFEST_INVALID", "DIGEST_INVALID", "UNSUPPORTED"), body


async def test_manifest_unknown(reg):
    for ref in ("nope", sha(b"nope")):
        status, _, body = await reg.call("GET", f"/v2/unknown/manifests/{ref}")
        assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN"
        status, _, body = await reg.call("HEAD", f"/v2/unknown/manifests/{ref}")
        assert status == 404 and body == b""
        status, _, body = await reg.call("DELETE", f"/v2/unknown/manifests/{ref}")
        assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN"
    # a blob that is not a manifest
    digest = await reg.push_blob("unknown", b"\x00\x01 not a manifest")
    status, _, body = await reg.call("GET", f"/v2/unknown/manifests/{digest}")
    assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN"


async def test_manifest_delete_by_tag_and_by_digest(reg, ctr):
    img = hand_image("del")
    digest = await push_image(reg, "delme", "1", img)
    await reg.push_manifest("delme", "2", img.manifest)
    status, _, _ = await reg.call("DELETE", "/v2/delme/manifests/1")
    assert status == 202
    assert [i.name for i in await ctr.images.list()] == ["docker.io/library/delme:2"]
    status, _, _ = await reg.call("GET", f"/v2/delme/manifests/{digest}")
    assert status == 200  # deleting a tag leaves the manifest
    status, _, _ = await reg.call("DELETE", f"/v2/delme/manifests/{digest}")
    assert status == 202
    assert await ctr.images.list() == []
    status, _, body = await reg.call("GET", f"/v2/delme/manifests/{digest}")
    assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN"


async def test_manifest_put_right_after_delete(reg, ctr):
    """DELETE then PUT of the same manifest, without pauses: containerd keeps the deleted bytes
    until its GC, and (content sharing) offers them to the next writer as a full ingest; the PUT
    must adopt them, not append the body after them. Both by tag and by digest, 20 rounds each."""
    img = hand_image("again")
    for blob in img.blobs():
        await reg.push_blob("again", blob)
    for i in range(20):
        ref = "1" if i % 2 == 0 else img.digest
        status, headers, body = await reg.call("PUT", f"/v2/again/manifests/{ref}", data=img.body,
                                               headers={"Content-Type": img.media_type})
        assert status == 201 and headers["Docker-Content-Digest"] == img.digest, (i, status, body)
        status, headers, body = await reg.call("GET", f"/v2/again/manifests/{ref}")
        assert status == 200 and body == img.body and headers["Content-Type"] == img.media_type, i
        labels = (await ctr.content.info(img.digest)).labels  # the commit labelled what it adopted
        assert labels[LABEL_MEDIA_TYPE] == img.media_type and labels[f"{GC_REF_CONTENT}.config"] == sha(img.config)
        status, _, body = await reg.call("DELETE", f"/v2/again/manifests/{img.digest}")
        assert status == 202, (i, body)
        status, _, _ = await reg.call("GET", f"/v2/again/manifests/{img.digest}")
        assert status == 404, i
    assert [s.ref for s in await ctr.content.list_statuses()] == []  # no ingest left behind


async def test_blob_upload_right_after_delete(reg, ctr):
    """The same for blobs: a deleted blob uploaded again at once, single request and chunked."""
    data = os.urandom(100_000)
    for i in range(20):
        if i % 2 == 0:
            await reg.push_blob("again", data)
        else:
            _, headers, _ = await reg.call("POST", "/v2/again/blobs/uploads/")
            status, headers, _ = await reg.call("PATCH", headers["Location"], data=data,
                                                headers={"Content-Range": f"0-{len(data) - 1}"})
            assert status == 202
            status, _, body = await reg.call("PUT", f"{headers['Location']}?digest={sha(data)}")
            assert status == 201, (i, body)
        status, _, body = await reg.call("GET", f"/v2/again/blobs/{sha(data)}")
        assert status == 200 and body == data, i
        status, _, _ = await reg.call("DELETE", f"/v2/again/blobs/{sha(data)}")
        assert status == 202, i


async def test_manifest_put_over_a_stale_ingest(reg, ctr):
    """A partial write left under the manifest's ingest ref (a registry killed mid-PUT) is started
    over, not appended to."""
    img = hand_image("stale")
    for blob in img.blobs():
        await reg.push_blob("stale", blob)
    ref = f"pussh-manifest-{img.digest.split(':')[1]}"
    async with ctr.content.writer(ref) as w:
        await w.open()
        await w.write(img.body[:7] + b"garbage")
    assert [s.offset for s in await ctr.content.list_statuses() if s.ref == ref] == [14]
    status, headers, body = await reg.call("PUT", "/v2/stale/manifests/1", data=img.body,
                                           headers={"Content-Type": img.media_type})
    assert status == 201 and headers["Docker-Content-Digest"] == img.digest, body
    assert (await reg.call("GET", "/v2/stale/manifests/1"))[2] == img.body


async def test_sha512_is_refused_by_containerd_so_unsupported(reg, ctr, ctr_socket):
    """containerd 1.7 hashes every ingest with sha256: a blob written with expected=sha512:... is
    refused at commit ("unexpected commit digest sha256:..., expected sha512:...") and never stored.
    So the registry answers sha512 writes with UNSUPPORTED (and lookups with unknown). Should a
    containerd accept it, this test fails and sha512 can be supported."""
    data = os.urandom(4096)
    d512 = "sha512:" + hashlib.sha512(data).hexdigest()

    async def source(offset: int):
        yield data[offset:]

    with pytest.raises(ContainerdError):
        await ctr.content.write_blob("sha512-probe", source, expected=d512, total=len(data))
    with pytest.raises(NotFound):
        await ctr.content.info(d512)
    log = (Path(ctr_socket).parent / "containerd.log").read_text(errors="replace")
    assert f"unexpected commit digest {sha(data)}, expected {d512}" in log
    with contextlib.suppress(ContainerdError):
        await ctr.content.abort("sha512-probe")

    for method, path in (("POST", f"/v2/s512/blobs/uploads/?digest={d512}"), ("PUT", f"/v2/s512/manifests/{d512}"),
                         ("GET", f"/v2/s512/blobs/{d512}")):
        status, _, body = await reg.call(method, path, data=data)
        assert status == 400 and error_code(body) == "UNSUPPORTED", (method, body)
    _, headers, _ = await reg.call("POST", "/v2/s512/blobs/uploads/")
    status, _, body = await reg.call("PUT", f"{headers['Location']}?digest={d512}", data=data)
    assert status == 400 and error_code(body) == "UNSUPPORTED"
    status, _, body = await reg.call("GET", f"/v2/s512/manifests/{d512}")
    assert status == 404 and error_code(body) == "MANIFEST_UNKNOWN"


async def test_digest_only_manifests_survive_gc(reg, ctr):
    img = hand_image("keep")
    for blob in img.blobs():
        await reg.push_blob("keep", blob)
    digest = await reg.push_manifest("keep", img.digest, img.manifest)
    await ctr.leases.collect_garbage()
    for lease in await ctr.leases.list():  # the uploads' and the manifest PUT's leases ending early
        if lease.id != UNTAGGED_LEASE:
            await ctr.leases.delete(lease.id)
    await ctr.leases.collect_garbage()
    for d in (digest, sha(img.config), *(sha(l) for l in img.layers)):
        assert await ctr.content.exists(d) is not None, d
    # once an index holds it, the untagged lease lets go: the index keeps it alive now
    await reg.push_manifest("keep", "multi", index_of({"amd64": img}))
    assert ("content", digest) not in await ctr.leases.list_resources(UNTAGGED_LEASE)
    for lease in await ctr.leases.list():
        if lease.id != UNTAGGED_LEASE:
            await ctr.leases.delete(lease.id)
    await ctr.leases.collect_garbage()
    assert await ctr.content.exists(digest) is not None
    # and an image that is removed lets its content go
    await ctr.images.delete("docker.io/library/keep:multi", sync=True)
    assert await ctr.content.exists(digest) is None
    assert await ctr.content.exists(sha(img.layers[0])) is None


# -- tags and catalog ------------------------------------------------------------------------------

async def test_tags_list_pagination(reg):
    img = hand_image("tags")
    await push_image(reg, "tagged", "a", img)
    for tag in ("c", "b", "d", "e"):
        await reg.push_manifest("tagged", tag, img.manifest)
    status, _, body = await reg.call("GET", "/v2/tagged/tags/list")
    assert status == 200 and json.loads(body) == {"name": "tagged", "tags": ["a", "b", "c", "d", "e"]}
    status, headers, body = await reg.call("GET", "/v2/tagged/tags/list?n=2")
    assert json.loads(body)["tags"] == ["a", "b"]
    assert headers["Link"] == '</v2/tagged/tags/list?n=2&last=b>; rel="next"'
    status, headers, body = await reg.call("GET", "/v2/tagged/tags/list?n=2&last=b")
    assert json.loads(body)["tags"] == ["c", "d"]
    status, headers, body = await reg.call("GET", "/v2/tagged/tags/list?n=2&last=d")
    assert json.loads(body)["tags"] == ["e"] and "Link" not in headers
    status, headers, body = await reg.call("GET", "/v2/tagged/tags/list?n=0")
    assert json.loads(body)["tags"] == []
    status, _, body = await reg.call("GET", "/v2/tagged/tags/list?n=-1")
    assert status == 400 and error_code(body) == "PAGINATION_NUMBER_INVALID"
    status, _, body = await reg.call("GET", "/v2/never/pushed/tags/list")
    assert status == 200 and json.loads(body)["tags"] == []


async def test_catalog(reg, ctr):
    img = hand_image("cat")
    await push_image(reg, "zeta", "1", img)
    for repo in ("alpha", "team/beta", "ghcr.io/org/gamma"):
        await reg.push_manifest(repo, "1", img.manifest)
    status, _, body = await reg.call("GET", "/v2/_catalog")
    assert json.loads(body) == {"repositories": ["alpha", "ghcr.io/org/gamma", "team/beta", "zeta"]}
    status, headers, body = await reg.call("GET", "/v2/_catalog?n=2")
    assert json.loads(body)["repositories"] == ["alpha", "ghcr.io/org/gamma"]
    assert headers["Link"] == '</v2/_catalog?n=2&last=ghcr.io/org/gamma>; rel="next"'
    status, headers, body = await reg.call("GET", "/v2/_catalog?n=2&last=ghcr.io/org/gamma")
    assert json.loads(body)["repositories"] == ["team/beta", "zeta"]


# -- referrers -------------------------------------------------------------------------------------

async def test_referrers(reg):
    img = hand_image("subject")
    subject = await push_image(reg, "ref", "1", img)
    empty = b"{}"
    await reg.push_blob("ref", empty)
    referrers = {}
    for kind in ("application/vnd.example.sbom", "application/vnd.example.sig"):
        art = {"schemaVersion": 2, "mediaType": MT.OCI_MANIFEST, "artifactType": kind,
               "config": {"mediaType": MT.OCI_EMPTY, "digest": sha(empty), "size": 2},
               "layers": [{"mediaType": MT.OCI_EMPTY, "digest": sha(empty), "size": 2}],
               "subject": {"mediaType": img.media_type, "digest": subject, "size": len(img.body)},
               "annotations": {"kind": kind}}
        body = json.dumps(art).encode()
        status, headers, resp = await reg.call("PUT", f"/v2/ref/manifests/{sha(body)}", data=body,
                                               headers={"Content-Type": MT.OCI_MANIFEST})
        assert status == 201 and headers["OCI-Subject"] == subject
        referrers[kind] = sha(body), len(body)
    status, headers, body = await reg.call("GET", f"/v2/ref/referrers/{subject}")
    assert status == 200 and headers["Content-Type"] == MT.OCI_INDEX
    index = json.loads(body)
    assert index["schemaVersion"] == 2 and index["mediaType"] == MT.OCI_INDEX
    got = {m["artifactType"]: (m["digest"], m["size"]) for m in index["manifests"]}
    assert got == referrers
    assert all(m["annotations"]["kind"] == m["artifactType"] for m in index["manifests"])
    status, headers, body = await reg.call("GET", f"/v2/ref/referrers/{subject}?artifactType=application/vnd.example.sig")
    assert headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in json.loads(body)["manifests"]] == [referrers["application/vnd.example.sig"][0]]
    status, _, body = await reg.call("GET", f"/v2/ref/referrers/{sha(b'no subject')}")
    assert status == 200 and json.loads(body)["manifests"] == []
    status, _, body = await reg.call("GET", "/v2/ref/referrers/sha256:bad")
    assert status == 400 and error_code(body) == "DIGEST_INVALID"


# -- auth ------------------------------------------------------------------------------------------

async def test_token_auth(ctr_socket, namespace):
    import base64

    token = "s3cret-token"
    async with serve(ctr_socket, namespace, token=token) as reg:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic !!!"},
                        {"Authorization": "Basic " + base64.b64encode(b"user:wrong").decode()},
                        {"Authorization": "Digest x"}):
            for path in ("/v2/", "/v2/x/tags/list", f"/v2/x/blobs/{sha(b'x')}"):
                status, resp_headers, body = await reg.call("GET", path, headers=headers)
                assert status == 401 and error_code(body) == "UNAUTHORIZED", (headers, path)
                assert resp_headers["WWW-Authenticate"] == 'Basic realm="pussh-registry"'
        status, _, _ = await reg.call("GET", "/v2/", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
        basic = base64.b64encode(f"anyone:{token}".encode()).decode()
        status, _, _ = await reg.call("GET", "/v2/", headers={"Authorization": f"Basic {basic}"})
        assert status == 200
        reg.headers = {"Authorization": f"Bearer {token}"}
        await reg.push_blob("authed", b"payload")


# -- races, interruptions, junk ---------------------------------------------------------------------

async def test_concurrent_puts_of_one_manifest(reg, ctr):
    """Same manifest, same tag, at once: the manifest's ingest is locked by the first writer and
    the others wait for it (or find the content committed): every PUT succeeds."""
    img = hand_image("samemanifest")
    for blob in img.blobs():
        await reg.push_blob("same", blob)
    results = await asyncio.gather(*(reg.call("PUT", f"/v2/same/manifests/{ref}", data=img.body,
                                              headers={"Content-Type": img.media_type})
                                     for ref in ["1"] * 4 + [img.digest] * 2))
    assert [r[0] for r in results] == [201] * 6, results
    assert (await ctr.images.get("docker.io/library/same:1")).target.digest == img.digest


async def test_client_gone_mid_patch_then_resume(reg, ctr):
    """A PATCH cut off mid-body: what containerd acknowledged stays; the client learns the offset
    from the status endpoint, continues from there, and the digest checks out at the end."""
    data = os.urandom(16 << 20)
    _, headers, _ = await reg.call("POST", "/v2/resume/blobs/uploads/")
    loc = headers["Location"]
    host, port = reg.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode())
    cut = 9 << 20
    for i in range(0, cut, 1 << 20):
        writer.write(data[i:i + (1 << 20)])
        await writer.drain()
    await asyncio.sleep(0.5)
    writer.transport.abort()  # the client dies
    offset = -1
    for _ in range(100):  # the registry notices, containerd finishes what it got
        status, headers, _ = await reg.call("GET", loc)
        assert status == 204
        new = int(headers["Range"].split("-")[1]) + 1
        if new == offset:
            break
        offset = new
        await asyncio.sleep(0.1)
    assert 0 < offset <= cut
    status, headers, body = await reg.call("PATCH", loc, data=data[offset:],
                                           headers={"Content-Range": f"{offset}-{len(data) - 1}"})
    assert status == 202, body
    status, _, body = await reg.call("PUT", f"{loc}?digest={sha(data)}")
    assert status == 201, body
    assert (await ctr.content.info(sha(data))).size == len(data)


async def test_concurrent_patches_of_one_upload_take_turns(reg):
    """Two PATCHes to one upload at once: they run one after the other (the upload's lock), and
    the one whose Content-Range no longer fits gets 416 with the current Range: nothing is lost."""
    a, b = os.urandom(3 << 20), os.urandom(3 << 20)
    _, headers, _ = await reg.call("POST", "/v2/turns/blobs/uploads/")
    loc = headers["Location"]
    r1, r2 = await asyncio.gather(
        reg.call("PATCH", loc, data=a, headers={"Content-Range": f"0-{len(a) - 1}"}),
        reg.call("PATCH", loc, data=b, headers={"Content-Range": f"0-{len(b) - 1}"}))
    assert sorted([r1[0], r2[0]]) == [202, 416]
    winner = a if r1[0] == 202 else b
    loser = r2 if r1[0] == 202 else r1
    assert loser[1]["Range"] == f"0-{len(winner) - 1}"
    status, _, _ = await reg.call("PUT", f"{loc}?digest={sha(winner)}")
    assert status == 201


async def test_junk_never_gets_a_500(reg):
    """Malformed input across every endpoint: client errors (4xx), never a server error."""
    import random

    rng = random.Random(1234)
    names = ["a", "A", "a/b", "", "..", "a%2Fb", "x" * 300, "_catalog", "a/blobs", "ü"]
    digests = ["sha256:" + "0" * 64, "sha256:", "sha256:xyz", "md5:abc", "", "sha512:" + "f" * 128, "%00", "a" * 500]
    tails = (["blobs/{d}", "blobs/uploads/", "blobs/uploads/{u}", "manifests/{d}", "manifests/{t}", "tags/list",
              "referrers/{d}"])
    uploads = ["0" * 32, "zz", "", "%2e%2e", "f" * 32 + "/x"]
    tags = ["latest", "-bad", "a" * 200, "t:t", "%20"]
    bodies = [b"", b"{}", b"null", b"[", os.urandom(64), json.dumps({"schemaVersion": 2}).encode(),
              json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_INDEX, "manifests": [{"digest": "x"}]}).encode()]
    headers_pool = [{}, {"Content-Range": "5-1"}, {"Content-Range": "bytes=0-0/1"}, {"Range": "bytes=9-1"},
                    {"Content-Type": "application/vnd.oci.image.index.v1+json"}, {"Content-Range": "0-99999999999999999999"},
                    {"Range": "bytes=-"}]
    queries = ["", "?digest={d}", "?mount={d}&from=x", "?n=x", "?n=-5&last=", "?artifactType=%00", "?digest="]
    for _ in range(300):
        tail = rng.choice(tails).format(d=rng.choice(digests), u=rng.choice(uploads), t=rng.choice(tags))
        path = f"/v2/{rng.choice(names)}/{tail}" + rng.choice(queries).format(d=rng.choice(digests))
        method = rng.choice(["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"])
        status, _, body = await reg.call(method, path, data=rng.choice(bodies), headers=rng.choice(headers_pool))
        assert status < 500, (method, path, status, body)


async def test_idle_upload_stream_is_ended_and_reopened(ctr_socket, namespace, ctr, monkeypatch):
    """An upload that goes quiet has its write stream ended (the ingest stays, unlocked: another
    writer can open it); its next request reopens the ingest where it stood, waiting for the lock
    if someone else holds it."""
    import registry.storage as storage_mod

    monkeypatch.setattr(storage_mod, "SWEEP_EVERY", 0.05)
    monkeypatch.setattr(storage_mod, "SESSION_IDLE", 1e9)  # not yet: the stream must stay open
    data = os.urandom(2 << 20)
    half = 1 << 20
    async with serve(ctr_socket, namespace) as reg:
        _, headers, _ = await reg.call("POST", "/v2/idle/blobs/uploads/")
        loc, uid = headers["Location"], headers["Docker-Upload-UUID"]
        status, _, _ = await reg.call("PATCH", loc, data=data[:half], headers={"Content-Range": f"0-{half - 1}"})
        assert status == 202
        ref = storage_mod.UPLOAD_PREFIX + uid
        with pytest.raises(Exception):  # while the registry holds the stream, the ingest is locked
            async with ctr.content.writer(ref) as w:
                await w.open()
        monkeypatch.setattr(storage_mod, "SESSION_IDLE", 0.0)  # now idle: the sweeper ends the stream

        async def unlocked() -> bool:
            try:
                async with ctr.content.writer(ref) as w:
                    assert await w.open() == half  # free to open, at the same offset
                return True
            except Unavailable:
                return False

        assert await wait_gone(unlocked)
        monkeypatch.setattr(storage_mod, "SESSION_IDLE", 1e9)
        status, headers, _ = await reg.call("PATCH", loc, data=data[half:],
                                            headers={"Content-Range": f"{half}-{len(data) - 1}"})
        assert status == 202
        status, _, body = await reg.call("PUT", f"{loc}?digest={sha(data)}")
        assert status == 201, body


async def test_children_pushed_by_tag_survive_until_their_index(reg, ctr):
    """containerd's pusher PUTs an index's children under the image's tag, one after the other,
    then the index: a child the tag has moved away from must survive GC until the index arrives."""
    images = {"amd64": hand_image("bytag-a"), "arm64": hand_image("bytag-b", arch="arm64")}
    for img in images.values():
        for blob in img.blobs():
            await reg.push_blob("bytag", blob)
        await reg.push_manifest("bytag", "1", img.manifest)  # the tag moves from child to child
    for lease in await ctr.leases.list():  # only the uploads' leases end early; the hold stays
        if lease.id.startswith("pussh-upload-"):
            await ctr.leases.delete(lease.id)
    await ctr.leases.collect_garbage()
    first = images["amd64"]
    assert await ctr.content.exists(first.digest) is not None
    assert await ctr.content.exists(sha(first.layers[0])) is not None
    digest = await reg.push_manifest("bytag", "1", index_of(images))
    assert (await ctr.images.get("docker.io/library/bytag:1")).target.digest == digest
