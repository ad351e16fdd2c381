"""HTTP client for the server's registry (OCI distribution API) through the SSH tunnel: blob
existence checks, chunked resumable blob uploads, manifest and tag PUTs."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urljoin

import aiohttp

from ctrd.content import Source

from . import errors
from .errors import PusshError

Progress = Callable[[int], None]  # called with a byte count to add (negative after a rewind)

CHUNK = 32 << 20  # bytes per PATCH: a retry resends at most this much
RETRIES = 5


class RegistryError(PusshError):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(RegistryError, errors.Transient):
    """Retries ran out on connection errors: the registry (or its container) is gone for now."""


class ConnectionLost(RegistryError, errors.ConnectionLost):
    """The SSH connection under the tunnel is gone: retrying is pointless."""


class _Retry(Exception):
    """A failure worth another attempt (connection trouble, 5xx, range mismatch)."""


def _disk_full(text: str) -> bool:
    t = text.lower()
    return "no space left" in t or "disk full" in t or "enospc" in t


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    body = await resp.text(errors="replace")
    try:
        errs = json.loads(body).get("errors") or []
        if errs:
            e = errs[0]
            return f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
    except (ValueError, AttributeError):
        pass
    return (body.strip().splitlines() or [resp.reason or str(resp.status)])[0][:300]


class Registry:
    """One repository on one registry. Requests carry the per-push bearer token."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, repository: str, token: str,
                 label: str = "registry", chunk_size: int = CHUNK, alive: Callable[[], bool] = lambda: True) -> None:
        self.session = session
        self.base = base_url.rstrip("/")
        self.repo = repository
        self.headers = {"Authorization": f"Bearer {token}"}
        self.label = label
        self.chunk_size = chunk_size
        self.alive = alive  # False once the transport under the tunnel is gone

    def _check_alive(self, err: BaseException) -> None:
        if not self.alive():
            raise ConnectionLost(f"{self.label}: connection lost during the push ({err or type(err).__name__}); "
                                 "run it again to resume") from err

    def _url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repo}/{path}"

    async def _fail(self, resp: aiohttp.ClientResponse, what: str) -> RegistryError:
        text = await _error_text(resp)
        if resp.status == 401:
            return RegistryError(f"{self.label}: the registry refused the push token ({text})", 401)
        if _disk_full(text) or resp.status == 507:
            return RegistryError(f"{self.label}: the server's disk is full ({what}: {text})", resp.status)
        return RegistryError(f"{self.label}: {what} failed: HTTP {resp.status} {text}", resp.status)

    async def has_blob(self, digest: str) -> bool:
        for attempt in range(RETRIES):
            try:
                async with self.session.head(self._url(f"blobs/{digest}"), headers=self.headers) as resp:
                    if resp.status == 200:
                        return True
                    if resp.status == 404:
                        return False
                    if resp.status < 500:
                        raise await self._fail(resp, f"HEAD {digest[:19]}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                self._check_alive(err)
                if attempt == RETRIES - 1:
                    raise
            await asyncio.sleep(0.2 * 2**attempt)
        raise RegistryError(f"{self.label}: HEAD {digest[:19]} kept failing")

    async def upload_blob(self, digest: str, size: int, source: Source, progress: Progress | None = None) -> None:
        """Upload in chunks of `chunk_size` (PATCH with Content-Range); the final PUT ?digest= has the
        registry verify the digest. After a failure, resume from the offset the registry reports.
        A hand-written loop rather than a retry library: each attempt must first ask the registry
        where the upload stands, which is state a generic retry decorator does not carry."""
        user_progress = progress or (lambda n: None)
        reported = 0

        def report(n: int) -> None:
            nonlocal reported
            reported += n
            user_progress(n)

        location: str | None = None
        for attempt in range(RETRIES + 1):
            try:
                offset = 0
                if location is not None:
                    resumed = await self._upload_offset(location)
                    offset = resumed or 0
                    if resumed is None:  # the session is gone: start over
                        location = None
                if location is None:
                    location = await self._start()
                report(offset - reported)  # rewind the bar to what the registry really has
                if size <= self.chunk_size and offset == 0:
                    await self._put(location, digest, source, 0, size, report)
                    return
                while offset < size:
                    n = min(self.chunk_size, size - offset)
                    location = await self._patch(location, source, offset, n, report)
                    offset += n
                await self._put(location, digest, None, offset, 0, report)
                return
            except (_Retry, aiohttp.ClientError, asyncio.TimeoutError) as err:
                self._check_alive(err)
                if attempt == RETRIES:
                    # 5xx or connection errors all the way: the server side is down for now
                    raise Unreachable(f"{self.label}: upload of {digest[:19]} failed after {RETRIES} retries: "
                               f"{err or type(err).__name__}") from err
                await asyncio.sleep(min(0.5 * 2**attempt, 8))
        raise AssertionError("unreachable")

    async def _start(self) -> str:
        async with self.session.post(self._url("blobs/uploads/"), headers=self.headers) as resp:
            if resp.status != 202:
                err = await self._fail(resp, "starting an upload")
                if resp.status >= 500 and not _disk_full(str(err)):
                    raise _Retry(str(err))
                raise err
            return self._location(resp)

    def _location(self, resp: aiohttp.ClientResponse) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{self.label}: the registry gave no upload Location")
        return urljoin(self.base + "/", loc)

    async def _upload_offset(self, location: str) -> int | None:
        """Where an upload session stands: the next byte the registry expects; None if it is gone."""
        async with self.session.get(location, headers=self.headers) as resp:
            if resp.status == 404:
                return None
            if resp.status not in (200, 204):
                raise _Retry(await _error_text(resp))
            rng = resp.headers.get("Range", "")
            if not rng:
                return 0
            end = rng.split("-", 1)[-1]
            return int(end) + 1 if end.isdigit() else 0

    def _body(self, source: Source, offset: int, n: int, progress: Progress) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            left = n
            it = source(offset)
            try:
                async for chunk in it:
                    if len(chunk) > left:
                        chunk = chunk[:left]
                    left -= len(chunk)
                    yield chunk
                    progress(len(chunk))
                    if left <= 0:
                        break
            finally:
                aclose = getattr(it, "aclose", None)
                if aclose:
                    await aclose()
            if left > 0:
                raise PusshError(f"{self.label}: local blob ended {left} bytes early")
        return gen()

    async def _patch(self, location: str, source: Source, offset: int, n: int, progress: Progress) -> str:
        headers = {**self.headers, "Content-Type": "application/octet-stream",
                   "Content-Range": f"{offset}-{offset + n - 1}", "Content-Length": str(n)}
        async with self.session.patch(location, data=self._body(source, offset, n, progress), headers=headers) as resp:
            if resp.status == 202:
                return self._location(resp)
            err = await self._fail(resp, "blob upload")
            if resp.status == 416 or (resp.status >= 500 and not _disk_full(str(err))):
                raise _Retry(str(err))
            raise err

    async def _put(self, location: str, digest: str, source: Source | None, offset: int, n: int,
                   progress: Progress) -> None:
        sep = "&" if "?" in location else "?"
        headers = {**self.headers, "Content-Type": "application/octet-stream", "Content-Length": str(n)}
        data: Any = self._body(source, offset, n, progress) if source is not None and n else b""
        async with self.session.put(f"{location}{sep}digest={digest}", data=data, headers=headers) as resp:
            if resp.status == 201:
                return
            err = await self._fail(resp, f"committing blob {digest[:19]}")
            if resp.status == 416 or (resp.status >= 500 and not _disk_full(str(err))):
                raise _Retry(str(err))
            raise err

    async def put_manifest(self, reference: str, media_type: str, body: bytes) -> None:
        headers = {**self.headers, "Content-Type": media_type}
        for attempt in range(RETRIES):
            try:
                async with self.session.put(self._url(f"manifests/{reference}"), data=body, headers=headers) as resp:
                    if resp.status in (200, 201):
                        return
                    err = await self._fail(resp, f"PUT manifest {reference[:19]}")
                    if resp.status < 500 or _disk_full(str(err)):
                        raise err
            except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                self._check_alive(err)
                if attempt == RETRIES - 1:
                    raise
            await asyncio.sleep(0.2 * 2**attempt)
        raise RegistryError(f"{self.label}: PUT manifest {reference[:19]} kept failing")
