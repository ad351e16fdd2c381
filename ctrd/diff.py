"""containerd diff service: Apply a layer blob from the content store onto a snapshot's mounts."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from proto import diff_pb2
from proto.diff_grpc import DiffStub

from . import errors
from .snapshots import Mount
from .types import Descriptor

if TYPE_CHECKING:
    from .client import Containerd


class DiffService:
    def __init__(self, client: "Containerd") -> None:
        self._client = client
        self._stub = DiffStub(client.channel)

    async def apply(self, layer: Descriptor, mounts: Sequence[Mount], *, lease: str | None = None,
                    timeout: float | None = None) -> Descriptor:
        """Extract `layer` (which must be in the content store, any supported compression) onto
        `mounts`. Returns the uncompressed tar's descriptor: its digest is the layer's diffID."""
        req = diff_pb2.ApplyRequest(diff=layer.to_pb(), mounts=[m.to_pb() for m in mounts])
        with errors.mapped():
            resp = await self._stub.Apply(req, metadata=self._client.metadata(lease), timeout=timeout)
        return Descriptor.from_pb(resp.applied)
