"""containerd leases: content written under a lease survives garbage collection until the lease
is deleted or its `containerd.io/gc.expire` time passes."""
from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from proto import leases_pb2
from proto.leases_grpc import LeasesStub

from . import errors
from .types import Lease

if TYPE_CHECKING:
    from .client import Containerd

EXPIRE_LABEL = "containerd.io/gc.expire"
FLAT_LABEL = "containerd.io/gc.flat"


class Leases:
    def __init__(self, client: "Containerd") -> None:
        self._client = client
        self._stub = LeasesStub(client.channel)

    async def create(
        self, lease_id: str | None = None, *, expire: timedelta | None = None, labels: dict[str, str] | None = None
    ) -> str:
        lease_id = lease_id or f"pussh-{secrets.token_hex(8)}"
        labels = dict(labels or {})
        if expire is not None:
            at = datetime.now(timezone.utc) + expire
            labels[EXPIRE_LABEL] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        with errors.mapped():
            resp = await self._stub.Create(
                leases_pb2.CreateRequest(id=lease_id, labels=labels), metadata=self._client.metadata()
            )
        return resp.lease.id

    async def delete(self, lease_id: str, *, sync: bool = False) -> None:
        """With sync=True containerd runs garbage collection before answering."""
        with errors.mapped():
            await self._stub.Delete(leases_pb2.DeleteRequest(id=lease_id, sync=sync), metadata=self._client.metadata())

    async def list(self, *filters: str) -> list[Lease]:
        with errors.mapped():
            resp = await self._stub.List(leases_pb2.ListRequest(filters=list(filters)), metadata=self._client.metadata())
        return [Lease(l.id, dict(l.labels)) for l in resp.leases]

    async def add_resource(self, lease_id: str, resource_id: str, resource_type: str = "content") -> None:
        """Put an existing resource (e.g. a blob digest, type "content") under the lease."""
        res = leases_pb2.Resource(id=resource_id, type=resource_type)
        with errors.mapped():
            await self._stub.AddResource(
                leases_pb2.AddResourceRequest(id=lease_id, resource=res), metadata=self._client.metadata()
            )

    async def delete_resource(self, lease_id: str, resource_id: str, resource_type: str = "content") -> None:
        """Take a resource out of the lease (it then lives only as long as something else holds it)."""
        res = leases_pb2.Resource(id=resource_id, type=resource_type)
        with errors.mapped():
            await self._stub.DeleteResource(
                leases_pb2.DeleteResourceRequest(id=lease_id, resource=res), metadata=self._client.metadata()
            )

    async def list_resources(self, lease_id: str) -> list[tuple[str, str]]:
        """(type, id) of every resource the lease holds."""
        with errors.mapped():
            resp = await self._stub.ListResources(
                leases_pb2.ListResourcesRequest(id=lease_id), metadata=self._client.metadata()
            )
        return [(r.type, r.id) for r in resp.resources]

    async def collect_garbage(self) -> None:
        """Run containerd's GC now: deleting a throwaway lease with sync=True does exactly that."""
        lease_id = await self.create(f"pussh-gc-{secrets.token_hex(4)}")
        await self.delete(lease_id, sync=True)

    @contextlib.asynccontextmanager
    async def temporary(self, expire: timedelta = timedelta(hours=1)) -> AsyncIterator[str]:
        """A lease that is deleted on exit; the expiry covers a crash in between."""
        lease_id = await self.create(expire=expire)
        try:
            yield lease_id
        finally:
            with contextlib.suppress(errors.ContainerdError):
                await self.delete(lease_id)
