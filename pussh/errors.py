"""Errors that reach the user as one line (no traceback) and a non-zero exit code."""
from __future__ import annotations


class PusshError(Exception):
    """A failure the user can act on; str(err) is the whole message."""

    exit_code = 1


class UsageError(PusshError):
    """Bad command-line input (invalid reference, target, platform...)."""

    exit_code = 2


class Transient(PusshError):
    """A fault that may pass (a dropped connection, a restarting daemon): the push is tried again,
    resuming, until --timeout has passed since the fault."""


class ConnectionLost(Transient):
    """The SSH connection under the push is gone: what was committed stays, and a re-run resumes."""


class ConnectFailed(Transient):
    """The SSH connection could not be made (refused, timed out, unreachable): transient only for a
    push that had connected before."""


class LocalReadError(PusshError):
    """Reading the local image failed mid-push."""


class NoSuchLocalImage(PusshError):
    """The image is not in the local store (compose names the service that lacks it)."""

    def __init__(self, familiar: str) -> None:
        super().__init__(f"no such local image: {familiar}")
