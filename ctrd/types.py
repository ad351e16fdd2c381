"""Plain dataclasses for what the containerd API returns, so callers never handle protobuf messages."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from proto import types_pb2


def _time(ts: Timestamp) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def to_pb(self) -> types_pb2.Descriptor:
        return types_pb2.Descriptor(
            media_type=self.media_type, digest=self.digest, size=self.size, annotations=self.annotations
        )

    @classmethod
    def from_pb(cls, d: types_pb2.Descriptor) -> "Descriptor":
        return cls(d.media_type, d.digest, d.size, dict(d.annotations))


@dataclass(frozen=True)
class Info:
    """A committed blob."""

    digest: str
    size: int
    labels: dict[str, str]
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_pb(cls, i) -> "Info":  # content_pb2.Info
        return cls(i.digest, i.size, dict(i.labels), _time(i.created_at), _time(i.updated_at))


@dataclass(frozen=True)
class IngestStatus:
    """An ingest in progress: `offset` bytes of `total` have been written under `ref`."""

    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_pb(cls, s) -> "IngestStatus":  # content_pb2.Status
        return cls(s.ref, s.offset, s.total, s.expected, _time(s.started_at), _time(s.updated_at))


@dataclass(frozen=True)
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_pb(cls, i) -> "Image":  # images_pb2.Image
        return cls(i.name, Descriptor.from_pb(i.target), dict(i.labels), _time(i.created_at), _time(i.updated_at))


@dataclass(frozen=True)
class Lease:
    id: str
    labels: dict[str, str]
    created_at: datetime | None = None
