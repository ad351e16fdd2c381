"""Support for the reliability suite: a raw HTTP/1.1 client (any bytes on the wire, counted), the
registry as a real process against a real containerd, and checks of a containerd image store's
consistency (complete images, no upload leftovers once the upload leases have expired)."""
from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ctrd import Containerd, errors
from oci import mediatypes as MT

# Requests sent by the raw client, per test (reported in the terminal summary by conftest.py).
COUNTS: Counter[str] = Counter()
_current = threading.local()

# The error codes of the distribution spec (plus RANGE_INVALID for a blob GET's unsatisfiable Range,
# which distribution answers with 416 too).
SPEC_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED",
    "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS", "RANGE_INVALID",
})
UPLOAD_LEASE_PREFIXES = ("pussh-upload-", "pussh-hold-")
PUSH_LEASE_LABEL = "pussh.push"  # the direct (containerd) path's per-push lease: id pussh-<hex>, this label


def upload_lease(lease_id: str, labels: dict[str, str]) -> bool:
    """A lease an upload takes: the registry's upload/hold leases, or a direct push's lease."""
    return lease_id.startswith(UPLOAD_LEASE_PREFIXES) or PUSH_LEASE_LABEL in labels


def registry_failures(log: str) -> list[str]:
    """The registry's log records that show a failure (ERROR or worse, or a traceback), except
    aiohttp's own reports of requests its HTTP parser refused (answered 400 before the registry
    saw them)."""
    records: list[str] = []
    for line in log.splitlines():
        if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) or not records:
            records.append(line)
        else:
            records[-1] += "\n" + line
    bad = []
    for rec in records:
        head = rec.split("\n", 1)[0]
        if " ERROR " not in head and " CRITICAL " not in head and "Traceback" not in rec:
            continue
        if "aiohttp.server" in head and "aiohttp.http_exceptions." in rec:
            continue
        bad.append(rec)
    return bad


def set_counter(name: str) -> None:
    _current.name = name


# What each test observed (struck at, exit code, message, tag after, bytes on the wire, ...), keyed by
# test id; conftest.py writes them with the run's outcomes to tests/reliability/out/run.json, and
# tests/reliability/report.py renders tests/RELIABILITY.md from that file.
RECORDS: dict[str, dict] = {}


def record(key: str | None = None, **fields) -> None:
    key = key or getattr(_current, "name", "other")
    RECORDS.setdefault(key, {}).update(fields)


# -- raw HTTP ----------------------------------------------------------------------------------------

@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes
    request: bytes = b""

    @property
    def code(self) -> str | None:
        """The spec error code of a JSON error body, else None."""
        try:
            return json.loads(self.body)["errors"][0]["code"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None

    def __repr__(self) -> str:
        return f"Resp({self.status}, {self.body[:300]!r}, request={self.request[:400]!r})"


class Raw:
    """One request per connection, written byte for byte as given (no client-side validation)."""

    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 60) -> None:
        self.host, self.port, self.token, self.timeout = host, port, token, timeout

    def send(self, data: bytes, method: str = "GET") -> Resp:
        COUNTS[getattr(_current, "name", "other")] += 1
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (and closed) before reading everything: read that answer
            r = http.client.HTTPResponse(s, method=method)
            r.begin()
            body = r.read()
            return Resp(r.status, dict(r.getheaders()), body, data)
        finally:
            s.close()

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | list | None = None,
                auth: bool = True, content_length: bool = True) -> Resp:
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        names = {k.lower() for k, _ in items}
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if auth and self.token and "authorization" not in names:
            lines.append(f"Authorization: Bearer {self.token}")
        if content_length and "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in items]
        lines.append("Connection: close")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return self.send(head.encode("utf-8", "surrogateescape") + body, method)


def assert_sane(r: Resp, *, json_error: bool = True) -> None:
    """A request the registry handled: success or a 4xx, never a 5xx; a 4xx from the app carries
    one of the spec's error codes (HEAD answers have no body)."""
    assert r.status < 500, r
    assert r.status >= 200, r
    if r.status >= 400 and json_error and r.request[:5] != b"HEAD ":
        # NOT_FOUND: the registry's code for a path that is no endpoint at all (the spec has none)
        assert r.code in SPEC_CODES or (r.status == 404 and r.code == "NOT_FOUND"), r


# -- containerd store checks -------------------------------------------------------------------------

NONDISTRIBUTABLE = ("application/vnd.docker.image.rootfs.foreign.", "application/vnd.oci.image.layer.nondistributable.")


@dataclass
class StoreReport:
    images: dict[str, str] = field(default_factory=dict)  # image name -> target digest
    broken: dict[str, list[str]] = field(default_factory=dict)  # image name -> problems
    content: dict[str, int] = field(default_factory=dict)  # digest -> size
    reachable: set[str] = field(default_factory=set)  # from image records
    ingests: list[str] = field(default_factory=list)  # ingest refs (uploads in progress)
    leases: dict[str, dict[str, str]] = field(default_factory=dict)  # lease id -> labels
    leased: dict[str, list[str]] = field(default_factory=dict)  # lease id -> content digests

    def problems(self) -> list[str]:
        return [f"{name}: {p}" for name, ps in sorted(self.broken.items()) for p in ps]

    def upload_leftovers(self) -> list[str]:
        """What an interrupted upload could leave: ingests, and upload/hold leases."""
        return [f"ingest {r}" for r in self.ingests] + [
            f"lease {l}" for l, labels in self.leases.items() if upload_lease(l, labels)]

    def unreferenced(self) -> set[str]:
        """Content neither reachable from an image record nor held by any lease (directly or as a
        child of leased content)."""
        return set(self.content) - self.reachable - self._lease_closure

    _lease_closure: set[str] = field(default_factory=set)


async def _children(c: Containerd, digest: str, media_type: str) -> list[tuple[str, str, int]]:
    """(media type, digest, size) of a manifest's or index's children, from its bytes."""
    if media_type not in MT.ALL_MANIFESTS and "manifest" not in media_type and "index" not in media_type:
        return []
    try:
        raw = json.loads(await c.content.read_all(digest, limit=8 << 20))
    except (ValueError, UnicodeDecodeError, errors.ContainerdError):
        return []
    if not isinstance(raw, dict) or "schemaVersion" not in raw:
        return []
    out = []
    descs = ([raw["config"]] if isinstance(raw.get("config"), dict) else []) + \
        [d for d in (raw.get("layers") or []) if isinstance(d, dict)] + \
        [d for d in (raw.get("manifests") or []) if isinstance(d, dict)]
    for d in descs:
        out.append((str(d.get("mediaType", "")), str(d.get("digest", "")), int(d.get("size", -1))))
    return out


async def _walk(c: Containerd, digest: str, media_type: str, size: int | None, content: dict[str, int],
                seen: set[str], problems: list[str]) -> None:
    if digest in seen:
        return
    seen.add(digest)
    if digest not in content:
        if not media_type.startswith(NONDISTRIBUTABLE):
            problems.append(f"missing {media_type or 'blob'} {digest}")
        return
    if size is not None and content[digest] != size:
        problems.append(f"{digest}: descriptor says {size} bytes, the store has {content[digest]}")
    for mt, d, s in await _children(c, digest, media_type):
        await _walk(c, d, mt, s, content, seen, problems)


async def store_report(sock: str, namespace: str = "moby") -> StoreReport:
    rep = StoreReport()
    async with Containerd(sock, namespace) as c:
        infos = await c.content.list()
        rep.content = {i.digest: i.size for i in infos}
        labels = {i.digest: i.labels for i in infos}
        for img in await c.images.list():
            rep.images[img.name] = img.target.digest
            problems: list[str] = []
            seen: set[str] = set()
            await _walk(c, img.target.digest, img.target.media_type, img.target.size, rep.content, seen, problems)
            rep.reachable |= seen
            if problems:
                rep.broken[img.name] = problems
        rep.ingests = [s.ref for s in await c.content.list_statuses()]
        for lease in await c.leases.list():
            rep.leases[lease.id] = lease.labels
            rep.leased[lease.id] = [rid for typ, rid in await c.leases.list_resources(lease.id) if typ == "content"]
        # what the leases keep alive: their resources and, through gc.ref labels, those resources' children
        todo = [d for ds in rep.leased.values() for d in ds]
        closure: set[str] = set()
        while todo:
            d = todo.pop()
            if d in closure:
                continue
            closure.add(d)
            todo += [v for k, v in labels.get(d, {}).items() if k.startswith("containerd.io/gc.ref.content")]
        rep._lease_closure = closure
    return rep


def report(sock: str, namespace: str = "moby") -> StoreReport:
    return asyncio.run(store_report(sock, namespace))


async def _expire_upload_leases(sock: str, namespace: str, max_expiry_s: float) -> list[str]:
    """Do what lease expiry does (delete them) to the registry's upload and hold leases, after
    checking each one HAS an expiry, no later than `max_expiry_s` from now; then collect garbage.
    Returns the leases that had no (or too distant an) expiry."""
    bad = []
    now = datetime.now(timezone.utc)
    async with Containerd(sock, namespace) as c:
        for lease in await c.leases.list():
            if not upload_lease(lease.id, lease.labels):
                continue
            exp = lease.labels.get("containerd.io/gc.expire")
            if not exp:
                bad.append(f"{lease.id}: no expiry")
                continue
            at = datetime.strptime(exp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            if (at - now).total_seconds() > max_expiry_s:
                bad.append(f"{lease.id}: expires at {exp}")
            await c.leases.delete(lease.id)
        await c.leases.collect_garbage()
    return bad


def expire_uploads(sock: str, namespace: str = "moby", max_expiry_s: float = 2 * 3600 + 120) -> list[str]:
    return asyncio.run(_expire_upload_leases(sock, namespace, max_expiry_s))


def gc(sock: str, namespace: str = "moby") -> None:
    async def run() -> None:
        async with Containerd(sock, namespace) as c:
            await c.leases.collect_garbage()
    asyncio.run(run())


def wait_until(pred, timeout: float, what: str, interval: float = 0.1):
    """Poll until pred() is truthy (returns it); fails the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
