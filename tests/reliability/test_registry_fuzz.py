"""Bad input to the registry, property based (hypothesis): names, references, digests, headers,
chunk ranges, manifest bodies, upload ids. The registry runs as its real process (`python -m
registry`, with a bearer token) against a real containerd; requests are written byte for byte by a
raw HTTP client.

Every request must get a success or a 4xx with one of the spec's error codes (never a 5xx, never a
dropped connection: the only requests that may be closed unanswered are those whose head, request
line plus headers, exceeds HEAD_LIMIT bytes; see test_huge_and_odd_requests), the process must never
crash or log a traceback, and
the store must stay consistent: every image record complete, every tag pointing at what the last
successful PUT gave it, no upload leftover once the upload leases expire. The number of requests is
printed in the terminal summary (conftest.py); a whole run of this module sends at least
MIN_REQUESTS of them (checked by its last test) and writes them to tests/reliability/out/run.json."""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from conftest import FUZZ_SCALE
from oci import mediatypes as MT
from oci import reference as R
from registry.storage import MANIFEST_LIMIT
from regsupport import bare_containerd, hand_image, index_of, start_registry_process
from relsupport import COUNTS, Raw, Resp, assert_sane, expire_uploads, record, registry_failures, report

pytestmark = pytest.mark.e2e
NS = "fuzz"
MIN_REQUESTS = 10_000  # per run of this module, at the committed example counts (PUSSH_FUZZ_SCALE=1)
# aiohttp refuses a request line or header line over 8190 bytes (400) without reading the rest; the
# unread bytes of a head beyond what it has read (64 KiB here) make the server's kernel reset the
# connection when it closes, which can destroy the 400 in flight. Such a request may go unanswered;
# every other request must get a status.
HEAD_LIMIT = 64 << 10


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * FUZZ_SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# An independent statement of the distribution spec's grammar (not the registry's own regexes).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")


_HOST_PORT = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                        r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")


def valid_name(name: str) -> bool:
    """The spec's repository grammar; or, the registry's one extension (so pussh can push images
    named after another registry), HOST:PORT/path."""
    if len(name) > 255:
        return False
    first, sep, rest = name.partition("/")
    if sep and (":" in first or first.startswith("[")):
        return _HOST_PORT.fullmatch(first) is not None and _NAME.fullmatch(rest) is not None
    return _NAME.fullmatch(name) is not None


def valid_tag(tag: str) -> bool:
    return _TAG.fullmatch(tag) is not None


class Fuzz:
    def __init__(self, raw: Raw, sock: str, proc, token: str) -> None:
        self.raw, self.sock, self.proc, self.token = raw, sock, proc, token
        self.blobs: dict[str, bytes] = {}  # digest -> bytes, all present in the store
        self.manifests: dict[str, bytes] = {}  # digest -> body
        self.tags: dict[str, str] = {}  # "repo:tag" -> digest the last successful PUT gave it

    def __repr__(self) -> str:
        return f"Fuzz(port={self.raw.port})"

    def req(self, method: str, path: str, body: bytes = b"", headers=None, **kw) -> Resp:
        return self.raw.request(method, path, body, headers, **kw)

    def push_blob(self, repo: str, data: bytes) -> str:
        r = self.req("POST", f"/v2/{repo}/blobs/uploads/?digest={sha(data)}", data)
        assert r.status == 201, r
        self.blobs[sha(data)] = data
        return sha(data)

    def push_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        r = self.req("PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": media_type})
        assert r.status == 201, r
        self.manifests[sha(body)] = body
        if ":" not in ref:
            self.tags[f"{repo}:{ref}"] = sha(body)
        return sha(body)


@pytest.fixture(scope="module")
def fz(tmp_path_factory):
    from relsupport import set_counter
    set_counter("fuzz setup (seed image)")
    d = tmp_path_factory.mktemp("fuzz")
    with bare_containerd(d) as sock:
        token = secrets.token_urlsafe(24)
        proc = start_registry_process(d, ["--listen", "127.0.0.1:0", "--containerd", sock, "--namespace", NS,
                                          "--log-level", "warning"], env={"PUSSH_REGISTRY_TOKEN": token})
        f = Fuzz(Raw("127.0.0.1", proc.port, token), sock, proc, token)
        try:
            img = hand_image("seed", 2)
            for b in img.blobs():
                f.push_blob("seed/app", b)
            f.push_manifest("seed/app", "1", img.body, img.media_type)
            f.seed = img
            idx = json.dumps(index_of({"amd64": img})).encode()
            f.push_manifest("seed/app", "multi", idx, MT.OCI_INDEX)
            f.seed_index = idx
            f.seed_digests = sorted({sha(b) for b in img.blobs()} | {img.digest, sha(idx)})
            yield f
        finally:
            rc = proc.stop()
        assert rc == 0, proc.stderr()[-3000:]


@pytest.fixture(autouse=True)
def consistent(fz):
    """After every test: the process lives, logged no failure, and the store is consistent."""
    yield
    assert fz.proc.proc.poll() is None, f"the registry died:\n{fz.proc.stderr()[-5000:]}"
    assert registry_failures(fz.proc.stderr()) == []
    rep = report(fz.sock, NS)
    assert rep.problems() == [], rep.problems()
    for name in rep.images:
        repo, _, tag = name.rpartition(":")
        assert valid_tag(tag) and not any(c.isspace() or ord(c) < 32 for c in name), name
    for key, digest in fz.tags.items():
        repo, tag = key.rsplit(":", 1)
        domain, path = R.split_domain(repo)  # Docker's naming: `app` is docker.io/library/app
        assert rep.images.get(f"{domain}/{path}:{tag}") == digest, (key, sorted(rep.images))
    assert fz.req("GET", "/v2/").status == 200


# -- names and path traversal ------------------------------------------------------------------------

ADVERSARIAL = ["..", ".", "%2e%2e", "%2E%2E", "..%2f..", "..%2F..%2Fetc", "%2f", "%2F", "", "A", "Ab", "a%00",
               "a%0a", "a%0A", "a%0d%0a", "a%20b", "%C3%A9", "\u00e9", "%ff", "~", "a:b", "a@b", "-a", "a-", "_a",
               "a__b", "a___b", "a..b", "a.-b", "a_-b", "localhost:5000", "127.0.0.1:5000", "%2e", "%5c", "a;b",
               "a,b", "$(id)", "`id`", "'", "%22", "*", "a%E2%80%8Bb", "%252e%252e", "a%2fb", "a%252fb", "x" * 300]
name_piece = st.one_of(st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,6})?", fullmatch=True),
                       st.sampled_from(ADVERSARIAL))
names = st.one_of(
    st.lists(name_piece, min_size=1, max_size=5).map("/".join),
    st.tuples(st.sampled_from(["localhost:5000", "127.0.0.1:5000", "[::1]:5000", "reg.example.com:8443", "h:x",
                               "[zz]:1", "a..b:1", "-h:1", "h:", "H:1", "[::1]"]),
              st.lists(name_piece, min_size=1, max_size=3).map("/".join)).map("/".join))


def wire_ok(text: str) -> bool:
    """Characters HTTP's request line carries as they are (others are a protocol error, answered by
    the HTTP parser before the registry sees them)."""
    return all(0x21 <= ord(c) <= 0x7E and c not in "?#" for c in text)


@examples(900)
@given(name=names, which=st.integers(0, 7))
def test_names(fz, name, which):
    seed_blob = next(iter(fz.blobs))
    endpoint = [("GET", "/tags/list", b""), ("POST", "/blobs/uploads/", b""), ("GET", "/manifests/latest", b""),
                ("HEAD", "/manifests/1", b""), ("PUT", "/manifests/fuzz", fz.seed.body),
                ("HEAD", f"/blobs/{seed_blob}", b""), ("GET", f"/referrers/{seed_blob}", b""),
                ("DELETE", "/manifests/nosuchtag", b"")][which]
    method, suffix, body = endpoint
    r = fz.req(method, f"/v2/{name}{suffix}", body, {"Content-Type": fz.seed.media_type} if body else None)
    decoded = unquote(name)
    note(f"decoded name {decoded!r} -> {r!r}")
    if not wire_ok(name):
        event("protocol-level name")
        assert 400 <= r.status < 500, r
        return
    assert_sane(r)
    if valid_name(decoded):
        event("valid name")
        assert r.code != "NAME_INVALID", r
        want = {"GET /tags/list": 200, "POST /blobs/uploads/": 202, "GET /manifests/latest": 404,
                "HEAD /manifests/1": 404 if decoded != "seed/app" else 200, "PUT /manifests/fuzz": 201,
                f"HEAD /blobs/{seed_blob}": 200, f"GET /referrers/{seed_blob}": 200,
                "DELETE /manifests/nosuchtag": 404}[f"{method} {suffix}"]
        assert r.status == want, r
        if r.status == 201:
            fz.tags[f"{decoded}:fuzz"] = sha(body)
        if r.status == 202:  # an upload session: let it go
            assert fz.req("DELETE", r.header("Location")).status == 204
    else:
        event("invalid name")
        assert r.status in (400, 404), r
        assert r.code in ("NAME_INVALID", "NOT_FOUND", None), r
        if r.status == 404:  # no route matched: an empty path segment at either end
            assert decoded.startswith("/") or decoded.endswith("/") or not decoded or "%2f" in name.lower(), r


# -- digests -----------------------------------------------------------------------------------------

HEX = "0123456789abcdef"
algorithms = st.one_of(st.sampled_from(["sha256"] * 4 + ["sha512", "SHA256", "sha384", "md5", "blake3",
                                                         "sha256+b64u", "sha-256", "", "sha256 ", "s", "sha256%00"]),
                       st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True))
separators = st.sampled_from([":"] * 6 + ["%3a", "%3A", "::", "", "%253a"])
hex_parts = st.one_of(
    st.text(HEX, min_size=64, max_size=64),
    st.text(HEX, min_size=0, max_size=130),
    st.text(HEX.upper(), min_size=64, max_size=64),
    st.text("0123456789abcdefgxyzABCDEF=_-+.", min_size=60, max_size=70),
    st.text(HEX, min_size=128, max_size=128),
    st.tuples(st.text(HEX, min_size=64, max_size=64),
              st.sampled_from(["%0a", "%0A", "%0d", "%00", "%20", "/", "%2f", "..", "=", "%3d", "%09", "\u00e9"])
              ).map("".join),
)


@st.composite
def digests(draw, fz):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(fz.seed_digests))
    return draw(algorithms) + draw(separators) + draw(hex_parts)


def digest_class(d: str) -> str:
    """canonical (sha256, well formed), unsupported (another algorithm, well formed) or invalid."""
    if _SHA256.fullmatch(d):
        return "canonical"
    if re.fullmatch(r"sha512:[a-f0-9]{128}", d) or re.fullmatch(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}", d):
        return "unsupported-or-invalid"
    return "invalid"


@examples(1100)
@given(data=st.data(), which=st.integers(0, 10))
def test_digests(fz, data, which):
    d = data.draw(digests(fz))
    decoded = unquote(d)
    kind = digest_class(decoded)
    repo = "fuzz/digests"
    if which == 7:  # a fresh upload finished with this digest
        loc = fz.req("POST", f"/v2/{repo}/blobs/uploads/").header("Location")
        r = fz.req("PUT", f"{loc}?digest={d}", b"some bytes")
    else:
        method, path, body = [
            ("HEAD", f"/v2/{repo}/blobs/{d}", b""), ("GET", f"/v2/{repo}/blobs/{d}", b""),
            ("GET", f"/v2/{repo}/manifests/{d}", b""), ("HEAD", f"/v2/{repo}/manifests/{d}", b""),
            ("PUT", f"/v2/{repo}/manifests/{d}", fz.seed.body), ("POST", f"/v2/{repo}/blobs/uploads/?digest={d}", b"x"),
            ("POST", f"/v2/{repo}/blobs/uploads/?mount={d}&from=seed/app", b""), None,
            ("GET", f"/v2/{repo}/referrers/{d}", b""), ("DELETE", f"/v2/{repo}/manifests/{d}", b""),
            ("DELETE", f"/v2/{repo}/blobs/{d}", b""),
        ][which]
        r = fz.req(method, path, body, {"Content-Type": fz.seed.media_type} if body else None)
    note(f"{decoded!r} ({kind}) -> {r!r}")
    event(f"digest {kind}")
    if not wire_ok(d.replace("?", "")):
        assert 400 <= r.status < 500, r
        return
    assert_sane(r)
    in_path = which not in (5, 6, 7)
    if kind == "canonical":
        assert r.code not in ("DIGEST_INVALID", "UNSUPPORTED") or which in (4, 5, 7) or (  # content mismatch
            which == 10 and r.status == 405), r  # or a blob an image needs: not deleted
        seed = {sha(b) for b in fz.seed.blobs()} | {fz.seed.digest, sha(fz.seed_index)}
        if which == 10 and decoded in seed:  # in use by the seed image: never deleted (the spec's 405)
            assert r.status == 405 and r.code == "UNSUPPORTED" and r.header("Allow") == "GET, HEAD", r
        if which == 9 and r.status == 202:  # deleting a manifest by digest untags it in this repository
            for key in [k for k, v in fz.tags.items() if k.startswith(f"{repo}:") and v == decoded]:
                del fz.tags[key]
        if which in (9, 10) and r.status == 202:
            fz.blobs.pop(decoded, None)
            fz.manifests.pop(decoded, None) if decoded not in seed else None
        if which == 6 and r.status == 202:
            assert fz.req("DELETE", r.header("Location")).status == 204
        return
    if in_path and "/" in decoded and "%2f" not in d.lower():
        assert r.status == 404, r  # the digest split the path: no such endpoint
        return
    if which in (2, 3, 4, 9) and ":" not in decoded:
        # no colon: a tag, not a digest
        key = f"{repo}:{decoded}"
        if not valid_tag(decoded) and which in (2, 3):  # a lookup of what cannot exist: unknown
            assert r.status == 404 and r.code in ("MANIFEST_UNKNOWN", None), r
        elif not valid_tag(decoded):  # PUT and DELETE: the reference itself is wrong
            assert r.status == 400 and r.code == "MANIFEST_INVALID", r
        elif which == 4:
            assert r.status == 201, r
            fz.tags[key] = fz.seed.digest
        elif which == 9:
            assert r.status == (202 if key in fz.tags else 404), r
            fz.tags.pop(key, None)
        else:
            assert r.status == (200 if key in fz.tags else 404), r
        return
    if which == 6:
        assert r.status == 400 and r.code in ("DIGEST_INVALID", "UNSUPPORTED"), r
        return
    if which in (2, 3):  # GET/HEAD of a manifest by a digest this store cannot hold: unknown
        assert r.status == 404 and r.code in ("MANIFEST_UNKNOWN", None), r
        return
    assert r.status == 400 or (r.status == 404 and which == 9), r
    assert r.code in ("DIGEST_INVALID", "UNSUPPORTED", "MANIFEST_UNKNOWN", None), r
    if kind == "invalid":
        assert r.code in ("DIGEST_INVALID", "MANIFEST_UNKNOWN", None), r


# -- unknown upload ids --------------------------------------------------------------------------------

upload_ids = st.one_of(st.text(HEX, min_size=32, max_size=32), st.text(HEX, min_size=0, max_size=40),
                       st.sampled_from(["..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "0" * 32, "A" * 32, "%00",
                                        "pussh-upload-" + "0" * 32, "0" * 31 + "%0a"]),
                       st.text(st.characters(codec="ascii", exclude_characters="/?# \r\n"), max_size=40))


@examples(400)
@given(uid=upload_ids, method=st.sampled_from(["GET", "PATCH", "PUT", "DELETE"]))
def test_unknown_upload_ids(fz, uid, method):
    path = f"/v2/fuzz/uploads/blobs/uploads/{quote(uid, safe='%')}"
    if method == "PUT":
        path += f"?digest={sha(b'x')}"
    r = fz.req(method, path, b"x" if method in ("PATCH", "PUT") else b"")
    assert_sane(r)
    if uid == "":  # the path of POST (start an upload): no other method there
        assert r.status == 405 and r.code == "UNSUPPORTED", r
        return
    assert r.status == 404 and r.code in ("BLOB_UPLOAD_UNKNOWN", "NOT_FOUND"), r


def test_finished_and_cancelled_upload_ids(fz):
    for finish in (True, False):
        loc = fz.req("POST", "/v2/fuzz/done/blobs/uploads/").header("Location")
        data = secrets.token_bytes(100)
        if finish:
            assert fz.req("PUT", f"{loc}?digest={sha(data)}", data).status == 201
            fz.blobs[sha(data)] = data
        else:
            assert fz.req("DELETE", loc).status == 204
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            r = fz.req(method, loc + (f"?digest={sha(data)}" if method == "PUT" else ""), b"y" if method == "PATCH" else b"")
            assert r.status == 404 and r.code == "BLOB_UPLOAD_UNKNOWN", (finish, method, r)


# -- chunk sequences -----------------------------------------------------------------------------------

chunk_ops = st.lists(st.one_of(
    st.tuples(st.just("exact"), st.integers(1, 70_000)),
    st.tuples(st.just("overlap"), st.integers(1, 5_000)),
    st.tuples(st.just("gap"), st.integers(1, 5_000)),
    st.tuples(st.just("streamed"), st.integers(0, 70_000)),
    st.tuples(st.just("badrange"), st.sampled_from(["bytes=a-b", "5-2", "-1-3", "0-", "x", "1-2-3", "0-99999999999999999999",
                                                    "bytes 0-1/2", " ", "0 - 3", "١-٢"])),
    st.tuples(st.just("lenmismatch"), st.integers(1, 5_000)),
    st.tuples(st.just("truncated"), st.integers(2, 70_000)),
    st.tuples(st.just("status"), st.just(0)),
    st.tuples(st.just("put"), st.sampled_from(["right", "right+body", "wrong", "existing-other", "none"])),
), min_size=1, max_size=12)


class Upload:
    def __init__(self, fz: Fuzz) -> None:
        r = fz.req("POST", "/v2/fuzz/chunks/blobs/uploads/")
        assert r.status == 202, r
        self.fz, self.loc, self.data, self.done = fz, r.header("Location"), bytearray(), False

    def expect_range(self, r: Resp) -> None:
        assert r.header("Range") == f"0-{max(len(self.data) - 1, 0)}", (r.headers, len(self.data))


@examples(700)
@given(ops=chunk_ops, seed=st.integers(0, 2**32))
def test_chunk_sequences(fz, ops, seed):
    """Any sequence of chunks, good and bad: the registry accepts exactly the ones that continue the
    upload, refuses the others with 416/400 and the current Range, and the final blob is exactly
    the accepted bytes."""
    import random
    rnd = random.Random(seed)
    up = Upload(fz)
    for op, arg in ops:
        if up.done:
            up = Upload(fz)
        off = len(up.data)
        if op in ("exact", "streamed"):
            chunk = rnd.randbytes(arg)
            hdr = {"Content-Range": f"{off}-{off + arg - 1}"} if op == "exact" else {}
            r = fz.req("PATCH", up.loc, chunk, hdr)
            assert r.status == 202, r
            up.data += chunk
            up.expect_range(r)
        elif op in ("overlap", "gap"):
            if op == "overlap" and off == 0:
                continue
            start = max(off - arg, 0) if op == "overlap" else off + arg
            r = fz.req("PATCH", up.loc, b"z" * 10, {"Content-Range": f"{start}-{start + 9}"})
            assert r.status == 416 and r.code == "BLOB_UPLOAD_INVALID", r
            if off:
                up.expect_range(r)
        elif op == "badrange":
            r = fz.req("PATCH", up.loc, b"z" * 4, {"Content-Range": arg})
            assert r.status in (400, 416) and r.code in ("BLOB_UPLOAD_INVALID", "SIZE_INVALID"), r
        elif op == "lenmismatch":
            r = fz.req("PATCH", up.loc, b"q" * arg, {"Content-Range": f"{off}-{off + arg}"})  # one byte more than sent
            assert r.status in (400, 416) and r.code in ("SIZE_INVALID", "BLOB_UPLOAD_INVALID"), r
        elif op == "truncated":
            # The client announces `arg` bytes, sends half and goes away without reading the answer.
            chunk = rnd.randbytes(arg)
            head = (f"PATCH {up.loc} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fz.token}\r\n"
                    f"Content-Range: {off}-{off + arg - 1}\r\nContent-Length: {arg}\r\n\r\n").encode()
            s = socket.create_connection(("127.0.0.1", fz.raw.port))
            s.sendall(head + chunk[: arg // 2])
            s.shutdown(socket.SHUT_WR)
            s.recv(1 << 16)  # wait until the server is done with it (answer or close)
            s.close()
            st_ = fz.req("GET", up.loc)
            assert st_.status == 204, st_
            have = int(st_.header("Range").split("-")[1]) + 1 if len(up.data) or st_.header("Range") != "0-0" else 0
            # whatever it kept of the half chunk is a prefix of what was sent (verified by the digest at the end)
            assert off <= have <= off + arg // 2, (off, have)
            up.data += chunk[: have - off]
        elif op == "status":
            r = fz.req("GET", up.loc)
            assert r.status == 204, r
            up.expect_range(r)
        elif op == "put":
            body = b""
            if arg == "right+body":
                body = rnd.randbytes(rnd.randint(1, 5000))
            digest = {"right": sha(bytes(up.data)), "right+body": sha(bytes(up.data) + body),
                      "wrong": sha(bytes(up.data) + b"!"), "existing-other": next(iter(fz.blobs))}.get(arg)
            if arg == "existing-other" and digest == sha(bytes(up.data)):
                continue
            r = fz.req("PUT", up.loc + (f"?digest={digest}" if digest else ""), body)
            if arg.startswith("right"):
                assert r.status == 201, r
                blob = bytes(up.data) + body
                got = fz.req("GET", f"/v2/fuzz/chunks/blobs/{digest}")
                assert got.status == 200 and got.body == blob
                fz.blobs[digest] = blob
            else:
                assert r.status == 400 and r.code == "DIGEST_INVALID", r
            up.done = arg != "none"
            if up.done:
                r = fz.req("GET", up.loc)
                assert r.status == 404 and r.code == "BLOB_UPLOAD_UNKNOWN", r
    if not up.done:
        assert fz.req("DELETE", up.loc).status == 204


# -- Range on blob GET ---------------------------------------------------------------------------------

@examples(300)
@given(spec=st.one_of(
    st.tuples(st.integers(0, 2100), st.integers(0, 2100)).map(lambda t: f"bytes={t[0]}-{t[1]}"),
    st.integers(0, 2100).map(lambda n: f"bytes={n}-"),
    st.integers(0, 2100).map(lambda n: f"bytes=-{n}"),
    st.sampled_from(["bytes=", "bytes=-", "bytes=0-1,3-4", "items=0-1", "bytes=a-b", "bytes=99999999999999999999-",
                     "bytes = 0-1", "", "bytes=-0", "bytes=0-0"])))
def test_blob_range(fz, spec):
    data = fz.seed.layers[0]
    n = len(data)
    r = fz.req("GET", f"/v2/seed/app/blobs/{sha(data)}", headers={"Range": spec})
    assert_sane(r, json_error=False)
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", spec)
    if not m or not (m.group(1) or m.group(2)):
        assert r.status == 200 and r.body == data, r
        return
    a, b = m.group(1), m.group(2)
    if not a:
        k = int(b)
        want = (max(n - k, 0), n - 1) if k else None
    else:
        start, end = int(a), int(b) if b else n - 1
        want = (start, min(end, n - 1)) if start <= end and start < n else None
    if want is None:
        assert r.status == 416 and r.header("Content-Range") == f"bytes */{n}", r
        assert r.code == "RANGE_INVALID", r  # as registry/README.md says
    else:
        assert r.status == 206 and r.body == data[want[0]:want[1] + 1], (spec, r)
        assert r.header("Content-Range") == f"bytes {want[0]}-{want[1]}/{n}"


# -- headers -------------------------------------------------------------------------------------------

header_names = st.sampled_from(["Authorization", "Content-Range", "Range", "Content-Type", "Accept", "Host",
                                "Transfer-Encoding", "Expect", "X-Anything", "Docker-Content-Digest",
                                "Content-Encoding", "If-None-Match"])
header_values = st.one_of(st.text(st.characters(codec="latin-1", exclude_characters="\r\n\x00"), max_size=200),
                          st.sampled_from(["Bearer", "Bearer ", "Basic", "Basic !!!", "Basic Og==", "bearer x",
                                           "chunked", "gzip", "100-continue", "*/*", "0-0", "bytes=0-0",
                                           "application/vnd.oci.image.manifest.v1+json; charset=utf-8"]))


@examples(600)
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=6), which=st.integers(0, 4))
def test_headers(fz, headers, which):
    seed_blob = sha(fz.seed.layers[0])
    method, path, body = [("GET", f"/v2/seed/app/blobs/{seed_blob}", b""),
                          ("PUT", "/v2/fuzz/headers/manifests/h", fz.seed.body),
                          ("PATCH", None, b"abcdef"), ("GET", "/v2/seed/app/manifests/1", b""),
                          ("GET", "/v2/_catalog", b"")][which]
    if path is None:
        path = fz.req("POST", "/v2/fuzz/headers/blobs/uploads/").header("Location")
    # Every one of these gets an answer (their heads are far below HEAD_LIMIT): a Transfer-Encoding
    # next to the Content-Length the client always sends is a 400 from the HTTP layer, not a hang-up.
    r = fz.req(method, path, body, headers)
    note(repr(r))
    auth = [v for k, v in headers if k == "Authorization"]
    if r.status in (400, 417, 431) and r.code is None:
        event(f"refused by the HTTP layer: {r.status}")
        return  # a malformed header set or an Expect it does not know, refused before the registry sees it
    assert_sane(r)
    if auth and auth[0].strip() not in (f"Bearer {fz.token}",):
        assert r.status == 401 and r.code == "UNAUTHORIZED", r
        assert "WWW-Authenticate" in r.headers
        return
    if which == 1 and r.status == 201:
        fz.tags["fuzz/headers:h"] = sha(body)


def http_incomplete():
    import http.client as hc
    return (hc.IncompleteRead, hc.RemoteDisconnected, hc.BadStatusLine)


@pytest.mark.parametrize("how", ["header-8k", "header-64k", "header-1m", "100-headers", "10k-headers", "path-100k",
                                 "query-1m", "method", "no-host"])
def test_huge_and_odd_requests(fz, how):
    """Oversized requests are refused (4xx, or, only for a head over HEAD_LIMIT bytes, the connection
    closed unanswered), without harm to the process; the others get their status."""
    tok = f"Authorization: Bearer {fz.token}\r\n"
    reqs = {
        "header-8k": f"GET /v2/ HTTP/1.1\r\nHost: x\r\n{tok}X-Big: {'a' * 8200}\r\n\r\n",
        "header-64k": f"GET /v2/ HTTP/1.1\r\nHost: x\r\n{tok}X-Big: {'a' * 65536}\r\n\r\n",
        "header-1m": f"GET /v2/ HTTP/1.1\r\nHost: x\r\n{tok}X-Big: {'a' * (1 << 20)}\r\n\r\n",
        "100-headers": f"GET /v2/ HTTP/1.1\r\nHost: x\r\n{tok}" + "".join(f"X-H{i}: v\r\n" for i in range(100)) + "\r\n",
        "10k-headers": f"GET /v2/ HTTP/1.1\r\nHost: x\r\n{tok}" + "".join(f"X-H{i}: v\r\n" for i in range(10_000)) + "\r\n",
        "path-100k": f"GET /v2/{'a/' * 50_000}tags/list HTTP/1.1\r\nHost: x\r\n{tok}\r\n",
        "query-1m": f"GET /v2/_catalog?n={'9' * (1 << 20)} HTTP/1.1\r\nHost: x\r\n{tok}\r\n",
        "method": f"BREW /v2/ HTTP/1.1\r\nHost: x\r\n{tok}\r\n",
        "no-host": f"GET /v2/ HTTP/1.1\r\n{tok}\r\n",
    }
    data = reqs[how].encode()
    head = data.split(b"\r\n\r\n", 1)[0]
    try:
        r = fz.raw.send(data)
    except http_incomplete() + (ConnectionError,) as err:
        assert len(head) > HEAD_LIMIT, f"{how}: a {len(head)}-byte head went unanswered: {err!r}"
        record(**{f"huge:{how}": "closed unanswered"})
        return
    record(**{f"huge:{how}": r.status})
    assert r.status < 500, r
    if how == "100-headers":
        assert r.status == 200, r
    elif how == "no-host":  # HTTP/1.1 requires one (RFC 9112 3.2)
        assert r.status == 400, r
    elif how == "method":
        assert r.status in (400, 405), r
    else:  # over aiohttp's 8190-byte line limit, or over its header count
        assert r.status in (400, 431), r


# -- manifests -----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)

MANIFEST_KEYS = ["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "artifactType", "annotations"]
DESC_KEYS = ["mediaType", "digest", "size", "platform", "annotations", "urls"]


@st.composite
def manifest_bodies(draw, fz):
    """(body, content type, children that must exist for it to be accepted, is it well-formed)."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "mutated", "mutated", "index", "index", "deep", "wide"]))
    img = fz.seed
    if kind == "bytes":
        return draw(st.binary(max_size=300)), draw(st.sampled_from([MT.OCI_MANIFEST, MT.OCI_INDEX, "", "text/plain"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), draw(st.sampled_from([MT.OCI_MANIFEST, MT.DOCKER_MANIFEST, ""]))
    if kind == "deep":
        depth = draw(st.sampled_from([100, 1000, 100_000]))
        wrap = draw(st.sampled_from(["[]", "{}"]))
        inner = "[" * depth + "]" * depth if wrap == "[]" else '{"a":' * depth + "1" + "}" * depth
        return f'{{"schemaVersion": 2, "mediaType": "{MT.OCI_MANIFEST}", "annotations": {inner}}}'.encode(), MT.OCI_MANIFEST
    if kind == "wide":
        n = draw(st.sampled_from([1000, 20_000]))
        m = dict(img.manifest)
        m["layers"] = [img.manifest["layers"][0]] * n
        return json.dumps(m).encode(), MT.OCI_MANIFEST
    if kind == "index":
        children = draw(st.lists(st.sampled_from(["manifest", "missing", "config-blob", "self-placeholder", "index",
                                                  "size-off", "bad-digest", "not-dict"]), min_size=0, max_size=4))
        entries = []
        for c in children:
            body = {"manifest": img.body, "index": fz.seed_index}.get(c, img.body)
            e = {"mediaType": MT.OCI_INDEX if c == "index" else MT.OCI_MANIFEST, "digest": sha(body), "size": len(body),
                 "platform": {"os": "linux", "architecture": "amd64"}}
            if c == "missing":
                e["digest"] = sha(b"missing" + draw(st.binary(max_size=8)))
            elif c == "config-blob":
                e["digest"], e["size"] = sha(img.config), len(img.config)
            elif c == "self-placeholder":
                e["digest"] = "sha256:" + "0" * 64  # it cannot name its own digest: a placeholder
            elif c == "size-off":
                e["size"] += draw(st.sampled_from([-1, 1, 10**12]))
            elif c == "bad-digest":
                e["digest"] = draw(st.sampled_from(["sha256:xyz", "md5:abc", "", "sha256:" + "A" * 64]))
            elif c == "not-dict":
                e = draw(st.sampled_from([1, "x", None, [], True]))
            entries.append(e)
        body = {"schemaVersion": 2, "mediaType": draw(st.sampled_from([MT.OCI_INDEX, MT.DOCKER_MANIFEST_LIST])),
                "manifests": entries}
        if draw(st.booleans()):
            body["subject"] = {"mediaType": MT.OCI_MANIFEST, "digest": draw(st.sampled_from(
                [sha(img.body), "sha256:" + "0" * 64, "sha256:bad"])), "size": len(img.body)}
        return json.dumps(body).encode(), draw(st.sampled_from([body["mediaType"], "", MT.OCI_MANIFEST]))
    # a valid manifest of the seed image, then mutations
    m = json.loads(img.body)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "config", "layer"]))
        layers = m.get("layers")
        target = m if where == "top" else (m.get("config") if where == "config" else
                                           layers[0] if isinstance(layers, list) and layers else None)
        if not isinstance(target, dict):
            continue
        key = draw(st.sampled_from(MANIFEST_KEYS if where == "top" else DESC_KEYS))
        action = draw(st.sampled_from(["drop", "set", "set-special"]))
        if action == "drop":
            target.pop(key, None)
        elif action == "set":
            target[key] = draw(json_values)
        else:
            target[key] = draw(st.sampled_from([
                -1, 0, 1, 10**20, "12", 1.5, True, None, [], {}, "sha256:" + "0" * 64, sha(img.config), sha(img.body),
                "sha512:" + "a" * 128, "SHA256:" + "A" * 64, MT.OCI_INDEX, MT.DOCKER_MANIFEST, [MT.OCI_MANIFEST],
                {"os": 1}, "../../etc/passwd", "\u0000", "x" * 10_000, 2, 3]))
    return json.dumps(m).encode(), draw(st.sampled_from([MT.OCI_MANIFEST, m.get("mediaType") if isinstance(m.get("mediaType"), str) else "", "", MT.DOCKER_MANIFEST, "application/json"]))


def _opt_str(v) -> bool:
    return v is None or isinstance(v, str)


def _str_map(v) -> bool:
    return v is None or (isinstance(v, dict) and all(isinstance(x, str) for x in v.values()))


def _descriptor_ok(d) -> bool:
    """The OCI Go types a Docker or containerd reading this manifest unmarshals it into: a field of
    the wrong JSON type makes the whole image unreadable there (null leaves the zero value)."""
    if not isinstance(d, dict):
        return False
    p = d.get("platform")
    return (_opt_str(d.get("mediaType")) and isinstance(d.get("digest"), str) and _SHA256.fullmatch(d["digest"])
            and type(d.get("size")) is int and d["size"] >= 0 and _str_map(d.get("annotations"))
            and _opt_str(d.get("artifactType"))
            and (d.get("urls") is None or isinstance(d["urls"], list) and all(isinstance(u, str) for u in d["urls"]))
            and (p is None or isinstance(p, dict) and all(_opt_str(p.get(k))
                                                          for k in ("os", "architecture", "variant", "os.version"))))


def go_compatible(body: bytes) -> bool:
    raw = json.loads(body)
    if not isinstance(raw, dict) or type(raw.get("schemaVersion")) is not int or raw["schemaVersion"] != 2:
        return False
    index = (raw.get("mediaType") or "") in MT.INDEXES or "config" not in raw
    # containerd's images.validateMediaType: a manifest with any "manifests" key, an index with any
    # "config" or "layers" key (null included) is refused
    if any(k in raw for k in (("fsLayers", "config", "layers") if index else ("fsLayers", "manifests"))):
        return False
    lists = [raw.get(k) for k in ("layers", "manifests")]
    return (_opt_str(raw.get("mediaType")) and _opt_str(raw.get("artifactType"))
            and _str_map(raw.get("annotations"))
            and all(v is None or isinstance(v, list) and all(_descriptor_ok(d) for d in v) for v in lists)
            and (raw.get("config") is None or _descriptor_ok(raw["config"]))
            and (raw.get("subject") is None or _descriptor_ok(raw["subject"])))


def _children_ok(fz, body: bytes) -> bool:
    """Whether every descriptor of an accepted manifest names content the store has, with that size."""
    raw = json.loads(body)
    descs = ([raw["config"]] if "config" in raw else []) + (raw.get("layers") or []) + (raw.get("manifests") or [])
    have = report(fz.sock, NS).content
    if not all(have.get(d["digest"]) == d["size"] for d in descs):
        return False
    for d in raw.get("manifests") or []:  # an index's children are manifests of the kind it says
        child = fz.req("GET", f"/v2/fuzz/any/manifests/{d['digest']}")
        if child.status != 200 or not go_compatible(child.body):
            return False
        if (d["mediaType"] in MT.INDEXES) != (json.loads(child.body).get("mediaType") in MT.INDEXES):
            return False
    return True


def must_accept(fz, body: bytes, ctype: str) -> bool:
    """A manifest the registry has to take: within the size limit, JSON the OCI Go types read, of a
    manifest media type that the Content-Type repeats, every child present with its size and an
    index's children manifests of the kind it says."""
    if len(body) > MANIFEST_LIMIT:
        return False
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nesting Python cannot read: not required
        return False
    if not isinstance(raw, dict) or not isinstance(raw.get("mediaType"), str) or \
            raw["mediaType"] not in MT.ALL_MANIFESTS or ctype != raw["mediaType"]:
        return False
    index = raw["mediaType"] in MT.INDEXES
    if not index and not isinstance(raw.get("config"), dict):
        return False
    if not go_compatible(body):
        return False
    # the OCI spec makes a descriptor's mediaType REQUIRED (the Go types would take it empty)
    descs = ([raw["config"]] if not index else []) + (raw.get("layers") or []) + (raw.get("manifests") or [])
    if not all(isinstance(d.get("mediaType"), str) and d["mediaType"] for d in descs):
        return False
    return _children_ok(fz, body)


MANIFEST_STATS = {"must-accept": 0, "accepted": 0}


@examples(500)
@given(data=st.data(), by_digest=st.booleans(), tag=st.sampled_from(["m1", "m2", "latest"]))
def test_manifests(fz, data, by_digest, tag):
    body, ctype = data.draw(manifest_bodies(fz))
    repo = "fuzz/manifests"
    ref = sha(body) if by_digest else tag
    before = fz.tags.get(f"{repo}:{tag}")
    required = must_accept(fz, body, ctype)
    r = fz.req("PUT", f"/v2/{repo}/manifests/{ref}", body, {"Content-Type": ctype} if ctype else None)
    note(f"{body[:500]!r} {ctype!r} -> {r!r}")
    assert_sane(r)
    if required:
        event("valid: must be accepted")
        MANIFEST_STATS["must-accept"] += 1
        assert r.status == 201, f"refused a valid manifest: {r!r}"
    if r.status == 201:
        MANIFEST_STATS["accepted"] += 1
        event("accepted")
        assert r.header("Docker-Content-Digest") == sha(body)
        raw = json.loads(body)  # an accepted manifest is a JSON object with schema 2 ...
        assert isinstance(raw, dict) and raw.get("schemaVersion") == 2
        assert go_compatible(body), "accepted a manifest Docker and containerd cannot read"
        assert _children_ok(fz, body), "accepted a manifest whose blobs are missing"  # ... and complete
        got = fz.req("GET", f"/v2/{repo}/manifests/{ref}")
        assert got.status == 200 and got.body == body, got
        if not by_digest:
            fz.tags[f"{repo}:{tag}"] = sha(body)
        fz.manifests[sha(body)] = body
    else:
        event(f"refused {r.status} {r.code}")
        assert r.status in (400, 404, 413), r
        assert r.code in ("MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "DIGEST_INVALID", "UNSUPPORTED"), r
        if not by_digest:
            cur = fz.req("GET", f"/v2/{repo}/manifests/{tag}")
            assert (cur.status == 200 and sha(cur.body) == before) if before else cur.status == 404, cur


def test_manifest_fuzz_required_valid_ones(request):
    """The acceptance check above ran: test_manifests drew valid manifests and each was accepted."""
    assert any(i.name == "test_manifests" for i in request.session.items), "run with test_manifests"
    record(**MANIFEST_STATS)
    assert MANIFEST_STATS["must-accept"] >= 20, MANIFEST_STATS


def test_oversized_manifests(fz):
    pad = b" " * (MANIFEST_LIMIT + 1 - len(fz.seed.body))
    body = fz.seed.body[:-1] + pad + b"}"
    assert len(body) > MANIFEST_LIMIT
    r = fz.req("PUT", "/v2/fuzz/big/manifests/1", body, {"Content-Type": fz.seed.media_type})
    assert r.status == 413 and r.code == "MANIFEST_INVALID", r
    # exactly at the limit (whitespace padding keeps it valid): accepted
    body = fz.seed.body[:-1] + b" " * (MANIFEST_LIMIT - len(fz.seed.body)) + b"}"
    assert len(body) == MANIFEST_LIMIT
    r = fz.req("PUT", "/v2/fuzz/big/manifests/1", body, {"Content-Type": fz.seed.media_type})
    assert r.status == 201, r
    fz.tags["fuzz/big:1"] = sha(body)
    # a lying Content-Length far beyond the limit is refused before any body is read
    r = fz.raw.send((f"PUT /v2/fuzz/big/manifests/2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fz.token}\r\n"
                     f"Content-Type: {MT.OCI_MANIFEST}\r\nContent-Length: {1 << 40}\r\n\r\n").encode() + b"{", "PUT")
    assert r.status == 413, r


def test_store_after_uploads_expire(fz):
    """Last: once the upload leases expire (done here by deleting them, as expiry does) and GC runs,
    no ingest and no unreferenced blob is left; the tagged images are whole."""
    bad = expire_uploads(fz.sock, NS)  # uploads: 1 h; mounts share an hourly lease of 2 h
    assert bad == []
    rep = report(fz.sock, NS)
    assert rep.ingests == []
    assert rep.upload_leftovers() == []
    assert rep.problems() == []
    assert rep.unreferenced() == set()
    # and what the seed tag names can still be pulled
    for d in [sha(b) for b in fz.seed.blobs()]:
        assert fz.req("HEAD", f"/v2/seed/app/blobs/{d}").status == 200


def test_request_count(request):
    """A whole run of this module (every test above in the session) sends at least MIN_REQUESTS."""
    mine = [i for i in request.session.items if i.module is request.module and i.name != "test_request_count"]
    ran = {i.nodeid.split("::", 1)[-1].split("[")[0] for i in mine}
    sent = sum(n for k, n in COUNTS.items() if k.split("[")[0] in ran or k.startswith("fuzz setup"))
    record(fuzz_requests=sent, fuzz_tests=len(mine))
    print(f"fuzz: {sent} requests")
    every = {x for x in dir(request.module) if x.startswith("test_")} - {"test_request_count"}
    if ran != every:
        pytest.fail(f"not run: {sorted(every - ran)}; the {MIN_REQUESTS} floor is for a whole run of the module")
    assert sent >= MIN_REQUESTS, f"{sent} requests sent, fewer than {MIN_REQUESTS}"
