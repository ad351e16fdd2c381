"""Referrers API, `/v2/<name>/referrers/<digest>[?artifactType=]`: an OCI index of the manifests
whose `subject` is the digest (recorded as a label on them when they were pushed)."""
from __future__ import annotations

import json

from aiohttp import web

from oci import mediatypes as MT

from .http import blob_digest, param, storage


async def list_referrers(request: web.Request) -> web.StreamResponse:
    digest = blob_digest(param(request, "digest"))
    artifact_type = request.query.get("artifactType") or None
    manifests = await storage(request).referrers(digest, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    body = {"schemaVersion": 2, "mediaType": MT.OCI_INDEX, "manifests": manifests}
    return web.Response(body=json.dumps(body).encode(), headers={**headers, "Content-Type": MT.OCI_INDEX})
