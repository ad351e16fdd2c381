"""Errors that reach the user as one line (no traceback) and a non-zero exit code."""
from __future__ import annotations


class PusshError(Exception):
    """A failure the user can act on; str(err) is the whole message."""

    exit_code = 1


class UsageError(PusshError):
    """Bad command-line input (invalid reference, target, platform...)."""

    exit_code = 2


class ConnectionLost(PusshError):
    """The SSH connection under the push is gone: what was committed stays, and a re-run resumes."""


class LocalReadError(PusshError):
    """Reading the local image failed mid-push."""
