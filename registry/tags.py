"""Tags list, `/v2/<name>/tags/list` with `n` and `last` pagination. A tag is an image record."""
from __future__ import annotations

from aiohttp import web

from .http import paginate, param, storage


async def list_tags(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    tags = await storage(request).tags(name)
    return paginate(tags, request, f"/v2/{name}/tags/list", "tags")
