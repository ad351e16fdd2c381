"""Typed errors for containerd calls, mapped from gRPC status codes (and socket failures)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError


class ContainerdError(Exception):
    """Any failed containerd call."""


class NotFound(ContainerdError):
    pass


class AlreadyExists(ContainerdError):
    pass


class Unavailable(ContainerdError):
    """The daemon cannot be reached, or a resource is busy (Locked: an ingest ref another writer holds)."""


class Locked(Unavailable):
    """An ingest ref that another Write stream holds: containerd refuses a second writer until the
    first one closes (its own UNAVAILABLE status, on a Write stream)."""


class StreamReset(Unavailable):
    """containerd ended a stream with an error status that grpclib could not deliver (it reports
    the reset that follows instead); for a Write, typically a locked ref or existing content."""


class FailedPrecondition(ContainerdError):
    """For writes: size or digest mismatch, or a write at the wrong offset."""


class InvalidArgument(ContainerdError):
    pass


_BY_STATUS: dict[Status, type[ContainerdError]] = {
    Status.NOT_FOUND: NotFound,
    Status.ALREADY_EXISTS: AlreadyExists,
    Status.UNAVAILABLE: Unavailable,
    Status.FAILED_PRECONDITION: FailedPrecondition,
    Status.INVALID_ARGUMENT: InvalidArgument,
    Status.OUT_OF_RANGE: FailedPrecondition,
}


def from_grpc(err: GRPCError, unavailable: type[Unavailable] = Unavailable) -> ContainerdError:
    cls = _BY_STATUS.get(err.status, ContainerdError)
    return (unavailable if cls is Unavailable else cls)(err.message or err.status.name)


@contextlib.contextmanager
def mapped(*, unavailable: type[Unavailable] = Unavailable) -> Iterator[None]:
    """Turn grpclib and socket exceptions raised inside the block into ContainerdError subclasses.
    `unavailable`: what containerd's own UNAVAILABLE status means in the block (opening a Write
    stream: Locked); a socket that fails stays plain Unavailable."""
    try:
        yield
    except GRPCError as err:
        raise from_grpc(err, unavailable) from err
    except StreamTerminatedError as err:
        raise StreamReset(f"containerd ended the stream: {err}") from err
    except (ConnectionError, FileNotFoundError) as err:
        raise Unavailable(f"containerd connection failed: {err}") from err
    except PermissionError as err:
        raise Unavailable(f"permission denied on the containerd socket: {err}") from err
