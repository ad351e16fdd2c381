"""containerd snapshots service: one snapshotter (e.g. "overlayfs") as a typed store.

Active snapshots (Prepare) are writable and named by a key; Commit turns one into a read-only
snapshot under a name (for image layers: the chain ID) that children Prepare on as their parent."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from google.protobuf.field_mask_pb2 import FieldMask

from proto import mount_pb2, snapshots_pb2
from proto.snapshots_grpc import SnapshotsStub

from . import errors
from .types import _time

if TYPE_CHECKING:
    from .client import Containerd

DEFAULT_SNAPSHOTTER = "overlayfs"
_KINDS = {snapshots_pb2.VIEW: "view", snapshots_pb2.ACTIVE: "active", snapshots_pb2.COMMITTED: "committed"}


@dataclass(frozen=True)
class Mount:
    """What the snapshotter says to mount for a snapshot (the mount(2) arguments)."""

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()

    def to_pb(self) -> mount_pb2.Mount:
        return mount_pb2.Mount(type=self.type, source=self.source, target=self.target, options=list(self.options))

    @classmethod
    def from_pb(cls, m: mount_pb2.Mount) -> "Mount":
        return cls(m.type, m.source, m.target, tuple(m.options))


def top_dir(mounts: list[Mount]) -> str | None:
    """The directory of the topmost layer in a view's mounts: a bind mount's source, or an
    overlay's first lowerdir (upper and work dirs absent: a view is read-only); None for
    anything else (a block device, a snapshotter without plain directories)."""
    if len(mounts) != 1:
        return None
    m = mounts[0]
    if m.type == "bind":
        return m.source
    if m.type == "overlay":
        lower = next((o.split("=", 1)[1] for o in m.options if o.startswith("lowerdir=")), "")
        return lower.split(":", 1)[0] or None
    return None


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    parent: str
    kind: str  # "active", "committed", "view" or "unknown"
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def committed(self) -> bool:
        return self.kind == "committed"

    @classmethod
    def from_pb(cls, i: snapshots_pb2.Info) -> "SnapshotInfo":
        return cls(i.name, i.parent, _KINDS.get(i.kind, "unknown"), dict(i.labels), _time(i.created_at),
                   _time(i.updated_at))


class Snapshots:
    """`c.snapshots("overlayfs")`. Calls made with `lease=` put the new snapshot under that lease,
    which keeps it from garbage collection until something else refers to it."""

    def __init__(self, client: "Containerd", snapshotter: str = DEFAULT_SNAPSHOTTER) -> None:
        self._client = client
        self.snapshotter = snapshotter
        self._stub = SnapshotsStub(client.channel)

    async def prepare(self, key: str, parent: str = "", *, labels: Mapping[str, str] | None = None,
                      lease: str | None = None) -> list[Mount]:
        req = snapshots_pb2.PrepareSnapshotRequest(snapshotter=self.snapshotter, key=key, parent=parent,
                                                   labels=dict(labels or {}))
        with errors.mapped():
            resp = await self._stub.Prepare(req, metadata=self._client.metadata(lease))
        return [Mount.from_pb(m) for m in resp.mounts]

    async def view(self, key: str, parent: str, *, labels: Mapping[str, str] | None = None,
                   lease: str | None = None) -> list[Mount]:
        """A read-only active snapshot of `parent` (to look into a committed one)."""
        req = snapshots_pb2.ViewSnapshotRequest(snapshotter=self.snapshotter, key=key, parent=parent,
                                                labels=dict(labels or {}))
        with errors.mapped():
            resp = await self._stub.View(req, metadata=self._client.metadata(lease))
        return [Mount.from_pb(m) for m in resp.mounts]

    async def mounts(self, key: str) -> list[Mount]:
        req = snapshots_pb2.MountsRequest(snapshotter=self.snapshotter, key=key)
        with errors.mapped():
            resp = await self._stub.Mounts(req, metadata=self._client.metadata())
        return [Mount.from_pb(m) for m in resp.mounts]

    async def commit(self, name: str, key: str, *, labels: Mapping[str, str] | None = None,
                     lease: str | None = None) -> None:
        req = snapshots_pb2.CommitSnapshotRequest(snapshotter=self.snapshotter, name=name, key=key,
                                                  labels=dict(labels or {}))
        with errors.mapped():
            await self._stub.Commit(req, metadata=self._client.metadata(lease))

    async def remove(self, key: str) -> None:
        """Remove a snapshot (active or committed); FailedPrecondition if it still has children."""
        req = snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key)
        with errors.mapped():
            await self._stub.Remove(req, metadata=self._client.metadata())

    async def stat(self, key: str) -> SnapshotInfo:
        req = snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        with errors.mapped():
            resp = await self._stub.Stat(req, metadata=self._client.metadata())
        return SnapshotInfo.from_pb(resp.info)

    async def exists(self, key: str) -> SnapshotInfo | None:
        try:
            return await self.stat(key)
        except errors.NotFound:
            return None

    async def set_labels(self, key: str, labels: Mapping[str, str]) -> SnapshotInfo:
        """Set (or, with an empty value, remove) only the given labels."""
        info = snapshots_pb2.Info(name=key, labels={k: v for k, v in labels.items() if v})
        req = snapshots_pb2.UpdateSnapshotRequest(snapshotter=self.snapshotter, info=info,
                                                  update_mask=FieldMask(paths=[f"labels.{k}" for k in labels]))
        with errors.mapped():
            resp = await self._stub.Update(req, metadata=self._client.metadata())
        return SnapshotInfo.from_pb(resp.info)

    async def list(self, *filters: str) -> list[SnapshotInfo]:
        out: list[SnapshotInfo] = []
        req = snapshots_pb2.ListSnapshotsRequest(snapshotter=self.snapshotter, filters=list(filters))
        with errors.mapped():
            async with self._stub.List.open(metadata=self._client.metadata()) as stream:
                await stream.send_message(req, end=True)
                async for resp in stream:
                    out.extend(SnapshotInfo.from_pb(i) for i in resp.info)
        return out

    async def usage(self, key: str) -> tuple[int, int]:
        """(bytes, inodes) the snapshot uses on its own (not counting parents)."""
        req = snapshots_pb2.UsageRequest(snapshotter=self.snapshotter, key=key)
        with errors.mapped():
            resp = await self._stub.Usage(req, metadata=self._client.metadata())
        return resp.size, resp.inodes
