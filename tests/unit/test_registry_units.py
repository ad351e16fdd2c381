"""Pure functions of the registry: ranges, auth headers, listen addresses, options, names,
error bodies and the storage errors' answers, body batching."""
from __future__ import annotations

import asyncio
import base64
import json

import pytest

from registry import errors as E
from registry.__main__ import parse_args, parse_listen
from registry.app import _authorized
from registry.blobs import parse_range
from registry.http import batched, blob_digest
from registry.storage import image_name, repository_of, sniff_media_type


@pytest.mark.parametrize("header,size,want", [
    ("bytes=0-9", 100, (0, 9)), ("bytes=90-", 100, (90, 99)), ("bytes=-10", 100, (90, 99)),
    ("bytes=-1000", 100, (0, 99)), ("bytes=50-5000", 100, (50, 99)), ("bytes=0-0", 1, (0, 0)),
    ("items=0-9", 100, None), ("bytes=1-2,5-6", 100, None), ("bytes=-", 100, None), ("garbage", 100, None),
])
def test_parse_range(header, size, want):
    assert parse_range(header, size) == want


@pytest.mark.parametrize("header,size", [("bytes=100-", 100), ("bytes=5-4", 100), ("bytes=-0", 100),
                                         ("bytes=0-", 0)])
def test_parse_range_unsatisfiable(header, size):
    with pytest.raises(E.RegistryError) as err:
        parse_range(header, size)
    assert err.value.status == 416 and err.value.headers["Content-Range"] == f"bytes */{size}"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


@pytest.mark.parametrize("header,ok", [
    ("Bearer tok", True), ("bearer tok", True), ("Bearer  tok", True), ("Bearer tok2", False), ("Bearer ", False),
    (f"Basic {b64('any:tok')}", True), (f"Basic {b64(':tok')}", True), (f"Basic {b64('tok:x')}", False),
    (f"Basic {b64('tok')}", False), ("Basic %%%", False), ("", False), ("tok", False), ("Token tok", False),
    ("Basic " + base64.b64encode(b"u:\xff").decode(), False),
])
def test_authorized(header, ok):
    assert _authorized(header, "tok") is ok


@pytest.mark.parametrize("text,want", [
    ("127.0.0.1:5000", ("127.0.0.1", 5000)), ("0.0.0.0:0", ("0.0.0.0", 0)), (":5000", ("0.0.0.0", 5000)),
    ("[::1]:5000", ("::1", 5000)), ("/run/reg.sock", "/run/reg.sock"), ("unix:rel.sock", "rel.sock"),
])
def test_parse_listen(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["localhost", "host:port", "5000"])
def test_parse_listen_invalid(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_options_flags_win_over_environment(tmp_path):
    env = {"PUSSH_REGISTRY_LISTEN": "1.2.3.4:1", "PUSSH_REGISTRY_NAMESPACE": "fromenv",
           "PUSSH_REGISTRY_TOKEN": "envtok", "PUSSH_REGISTRY_UPLOAD_EXPIRY": "12",
           "PUSSH_REGISTRY_LOG_FORMAT": "JSON"}
    a = parse_args([], env)
    assert (a.listen, a.namespace, a.token, a.upload_expiry, a.log_format) == ("1.2.3.4:1", "fromenv", "envtok", 12.0, "json")
    f = tmp_path / "tok"
    f.write_text("filetok\n")
    a = parse_args(["--listen", "127.0.0.1:0", "--namespace", "flag", "--token-file", str(f)], env)
    assert (a.listen, a.namespace, a.token) == ("127.0.0.1:0", "flag", "filetok")
    a = parse_args([], {})
    assert (a.listen, a.containerd, a.namespace, a.token, a.upload_expiry) == (
        "127.0.0.1:5000", "/run/containerd/containerd.sock", "moby", None, 3600.0)


@pytest.mark.parametrize("repo,tag,name", [
    ("myapp", "1", "docker.io/library/myapp:1"), ("library/myapp", "1", "docker.io/library/myapp:1"),
    ("team/app", "v2", "docker.io/team/app:v2"), ("ghcr.io/x/y", "t", "ghcr.io/x/y:t"),
    ("localhost/a", "1", "localhost/a:1"),
])
def test_image_name_and_back(repo, tag, name):
    assert image_name(repo, tag) == name
    back = repository_of(name)
    assert back is not None and image_name(back[0], back[1]) == name


@pytest.mark.parametrize("name", ["docker.io/library/a@sha256:" + "0" * 64, "localhost:5000/a:1", "notag",
                                  "moby-dangling@sha256:" + "1" * 64])
def test_repository_of_unaddressable(name):
    assert repository_of(name) is None


def test_sniff_media_type():
    assert sniff_media_type(b'{"mediaType": "x/y"}') == "x/y"
    assert sniff_media_type(b'{"manifests": []}').endswith("index.v1+json")
    assert sniff_media_type(b'{"config": {}}').endswith("manifest.v1+json")
    assert sniff_media_type(b"\x00binary") == "" and sniff_media_type(b"[]") == ""


def test_error_body_and_factories():
    err = E.blob_unknown(detail={"digest": "sha256:x"})
    assert err.status == 404 and err.body() == {"errors": [{"code": "BLOB_UNKNOWN", "message": err.message,
                                                             "detail": {"digest": "sha256:x"}}]}
    assert E.unauthorized().status == 401 and E.manifest_too_large(10).status == 413
    assert E.range_invalid("x", "0-9").headers == {"Range": "0-9"} and E.range_invalid("x").status == 416
    assert E.method_not_allowed("POST").status == 405 and E.unsupported().status == 400
    json.dumps(err.body())


def test_storage_errors_get_their_spec_answer_by_type():
    err = E.from_storage(E.BlobInUse("sha256:" + "a" * 64, "docker.io/library/app:1"))
    assert (err.status, err.code, err.headers) == (405, "UNSUPPORTED", {"Allow": "GET, HEAD"})
    assert "docker.io/library/app:1" in err.message and err.detail["user"] == "docker.io/library/app:1"
    err = E.from_storage(E.UnsupportedDigest("sha512:" + "b" * 128))
    assert (err.status, err.code) == (400, "UNSUPPORTED") and err.detail == {"digest": "sha512:" + "b" * 128}

    class Unmapped(E.StorageError):
        pass

    with pytest.raises(TypeError):  # a domain error without an answer is a bug, not a client error
        E.from_storage(Unmapped())


def test_blob_digest_sha512_is_unsupported_malformed_is_invalid():
    with pytest.raises(E.UnsupportedDigest):
        blob_digest("sha512:" + "c" * 128)
    for bad in ("sha512:abc", "md5:" + "0" * 32, "", "sha256:XYZ"):
        with pytest.raises(E.RegistryError) as info:
            blob_digest(bad)
        assert info.value.code == "DIGEST_INVALID", bad
    assert blob_digest("sha256:" + "d" * 64) == "sha256:" + "d" * 64


def test_batched_regroups_without_losing_bytes():
    class Body:
        def __init__(self, pieces):
            self.pieces = pieces

        async def iter_any(self):
            for p in self.pieces:
                yield p

    pieces = [bytes([i]) * (i * 37 % 1000 + 1) for i in range(200)]

    async def collect():
        return [list(b) async for b in batched(Body(pieces), size=4096)]

    batches = asyncio.run(collect())
    assert b"".join(b"".join(b) for b in batches) == b"".join(pieces)
    assert all(sum(map(len, b)) >= 4096 for b in batches[:-1])
    assert all(sum(map(len, b)) < 4096 + 1000 for b in batches)
