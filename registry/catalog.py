"""`/v2/_catalog`: the repositories that have tags, named as a client addresses them (Docker Hub
names in their short form: `docker.io/library/myapp` is `myapp`)."""
from __future__ import annotations

from aiohttp import web

from .http import paginate, storage


async def catalog(request: web.Request) -> web.StreamResponse:
    repos = await storage(request).repositories()
    return paginate(repos, request, "/v2/_catalog", "repositories")
