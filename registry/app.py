"""The aiohttp application: routes (distribution's URL layout), the auth and error middlewares,
and the storage's life cycle."""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import re
from urllib.parse import unquote
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web

from ctrd import DEFAULT_NAMESPACE, DEFAULT_SOCKET, Containerd
from ctrd import errors as CE
from oci import reference as R

from . import blobs, catalog, manifests, referrers, tags, uploads
from . import errors as E
from .http import API_VERSION_HEADER, ROUTE
from .storage import Storage

log = logging.getLogger("pussh.registry")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STORAGE = web.AppKey("storage", Storage)
REALM = "pussh-registry"


@dataclass(frozen=True)
class Config:
    containerd_socket: str = DEFAULT_SOCKET
    namespace: str = DEFAULT_NAMESPACE
    token: str | None = None
    upload_expiry: timedelta = timedelta(hours=1)


CONFIG = web.AppKey("config", Config)


# Distribution's routes. A repository name may contain slashes, so each pattern takes the longest
# name that leaves a valid suffix; names are validated afterwards (NAME_INVALID, not a 404).
_NAME = r"(?P<name>[^?#]+?)"
ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
    (re.compile(r"^/v2/?$"), {}),  # filled below: the base endpoint has no name
    (re.compile(r"^/v2/_catalog$"), {"GET": catalog.catalog}),
    (re.compile(rf"^/v2/{_NAME}/blobs/uploads/?$"), {"POST": uploads.start}),
    (re.compile(rf"^/v2/{_NAME}/blobs/uploads/(?P<uuid>[^/]+)$"),
     {"GET": uploads.status, "PATCH": uploads.patch, "PUT": uploads.finish, "DELETE": uploads.cancel}),
    (re.compile(rf"^/v2/{_NAME}/blobs/(?P<digest>[^/]+)$"),
     {"GET": blobs.get, "HEAD": blobs.head, "DELETE": blobs.delete}),
    (re.compile(rf"^/v2/{_NAME}/manifests/(?P<reference>[^/]+)$"),
     {"GET": manifests.get, "HEAD": manifests.head, "PUT": manifests.put, "DELETE": manifests.delete}),
    (re.compile(rf"^/v2/{_NAME}/tags/list$"), {"GET": tags.list_tags}),
    (re.compile(rf"^/v2/{_NAME}/referrers/(?P<digest>[^/]+)$"), {"GET": referrers.list_referrers}),
]


async def base(request: web.Request) -> web.StreamResponse:
    return web.json_response({})


ROUTES[0] = (ROUTES[0][0], {"GET": base, "HEAD": base})


async def dispatch(request: web.Request) -> web.StreamResponse:
    # The raw path: an encoded slash (%2F) must not create a path segment.
    path = request.rel_url.raw_path
    for pattern, handlers in ROUTES:
        m = pattern.match(path)
        if not m:
            continue
        params = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
        name = params.get("name")
        if name is not None:
            _check_name(name)
        handler = handlers.get(request.method)
        if handler is None:
            err = E.method_not_allowed(request.method)
            err.headers["Allow"] = ", ".join(sorted(handlers))
            raise err
        request[ROUTE] = params
        return await handler(request)
    raise E.RegistryError("NOT_FOUND", 404, f"no such endpoint: {request.method} {path}")


def _check_name(name: str) -> None:
    """A repository name as the spec has it, or (beyond the spec, for images named after another
    registry) HOST[:PORT]/path, so that pussh can push `localhost:5000/app:1` as that name."""
    first, sep, rest = name.partition("/")
    try:
        if sep and (":" in first or first.startswith("[")):
            domain, path = R.split_domain(name)  # validates the host (and port)
            valid = len(name) <= R.MAX_NAME and domain == first and R.is_valid_repository(path)
        else:
            valid = R.is_valid_repository(name)
            R.split_domain(name)
    except R.InvalidReference:
        valid = False
    if not valid:
        raise E.name_invalid(detail={"name": name})


def _authorized(header: str, token: str) -> bool:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _, sep, password = decoded.partition(":")
        # Any user name: `docker login -u whatever -p TOKEN` on the server works.
        return bool(sep) and hmac.compare_digest(password.encode(), token.encode())
    return False


def _error_response(request: web.Request, err: E.RegistryError) -> web.Response:
    headers = {**API_VERSION_HEADER, **err.headers}
    if request.method == "HEAD":
        return web.Response(status=err.status, headers=headers)
    return web.json_response(err.body(), status=err.status, headers=headers)


class InFlight:
    """Requests being handled, so a shutdown can wait for them. aiohttp's own graceful shutdown
    cannot be used for that: it marks every connection closing first, and a connection marked so
    drops the rest of a request body that is still arriving (an upload in flight would hang)."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for those in flight; False if some outlived `timeout`."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


INFLIGHT = web.AppKey("inflight", InFlight)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth first (every request, /v2/ included), then the handler; spec errors become the
    spec's JSON; containerd being unreachable is a 503; only a bug is a 500."""
    inflight = request.app[INFLIGHT]
    if inflight.draining:
        # Shutting down: a new request on a kept-alive connection is refused, not started.
        resp = _error_response(request, E.unavailable("the registry is shutting down"))
        resp.force_close()
        return resp
    inflight.enter()
    try:
        return await _handle(request, handler)
    finally:
        inflight.leave()


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[CONFIG].token
    try:
        if token is not None and not _authorized(request.headers.get("Authorization", ""), token):
            raise E.unauthorized(headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})
        try:
            resp = await handler(request)
        except E.StorageError as err:  # the storage's terms, given their spec answer here
            raise E.from_storage(err) from err
    except E.RegistryError as err:
        if err.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, err)
        else:
            # 404s are how clients ask "do you have it?": not worth more than debug.
            log.log(logging.DEBUG if err.status in (401, 404) else logging.INFO, "%s %s: %s %s%s",
                    request.method, request.path, err.status, err, f" {err.detail}" if err.detail else "")
        return _error_response(request, err)
    except (CE.Unavailable, CE.StreamReset) as err:
        log.warning("%s %s: containerd unavailable: %s", request.method, request.path, err)
        return _error_response(request, E.unavailable(f"containerd is unavailable: {err}"))
    except ConnectionResetError:
        # The client went away mid-request (a killed push): not our failure. What it had sent
        # stays in the upload's ingest until the upload's lease expires.
        log.info("%s %s: client disconnected", request.method, request.path)
        return web.Response(status=499)
    except web.RequestPayloadError as err:
        # a body aiohttp could not decode (a Content-Encoding that is not what it says, bad chunking)
        return _error_response(request, E.unsupported(f"unreadable request body: {err}"))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error_response(request, E.RegistryError("UNKNOWN", 500, "internal error"))
    if not resp.prepared:
        resp.headers.update(API_VERSION_HEADER)
    return resp


async def _headers_on_stream(request: web.Request, resp: web.StreamResponse) -> None:
    resp.headers.update(API_VERSION_HEADER)


def make_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[middleware], client_max_size=1 << 20)
    app[CONFIG] = config
    app[INFLIGHT] = InFlight()
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)  # every path, even one with a %0A-decoded newline
    app.on_response_prepare.append(_headers_on_stream)

    async def storage_ctx(app: web.Application):
        ctr = Containerd(config.containerd_socket, namespace=config.namespace)
        storage = Storage(ctr, upload_expiry=config.upload_expiry)
        await storage.start()
        app[STORAGE] = storage
        log.info("storage: containerd %s, namespace %s, content root %s", config.containerd_socket,
                 config.namespace, await ctr.content_root() or "(gRPC reads)")
        yield
        await storage.close()
        ctr.close()

    app.cleanup_ctx.append(storage_ctx)
    return app
