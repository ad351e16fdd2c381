"""The distribution spec's error codes, raised by handlers and rendered as the spec's JSON body
(`{"errors": [{"code", "message", "detail"}]}`) by the error middleware in app.py; and the storage's
domain errors (`StorageError`), which say what the store found in its own terms and are given their
spec answer here, at the HTTP edge (`from_storage`), by type."""
from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """An error the client caused (or may act on); never logged as a server failure."""

    def __init__(self, code: str, status: int, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            err["detail"] = self.detail
        return {"errors": [err]}


def _factory(code: str, status: int, default: str):
    def make(message: str = default, detail: Any = None, headers: dict[str, str] | None = None) -> RegistryError:
        return RegistryError(code, status, message, detail, headers)
    make.__name__ = code.lower()
    return make


blob_unknown = _factory("BLOB_UNKNOWN", 404, "blob unknown to registry")
blob_upload_invalid = _factory("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
blob_upload_unknown = _factory("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
digest_invalid = _factory("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
manifest_blob_unknown = _factory("MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry")
manifest_invalid = _factory("MANIFEST_INVALID", 400, "manifest invalid")
manifest_unknown = _factory("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
name_invalid = _factory("NAME_INVALID", 400, "invalid repository name")
name_unknown = _factory("NAME_UNKNOWN", 404, "repository name not known to registry")
size_invalid = _factory("SIZE_INVALID", 400, "provided length did not match content length")
unauthorized = _factory("UNAUTHORIZED", 401, "authentication required")
denied = _factory("DENIED", 403, "requested access to the resource is denied")
unsupported = _factory("UNSUPPORTED", 400, "the operation is unsupported")


class StorageError(Exception):
    """An outcome of the storage that the client caused; `from_storage` gives its HTTP answer."""


class BlobInUse(StorageError):
    """A blob an image of the host (or a manifest kept untagged) still reaches: not deleted."""

    def __init__(self, digest: str, user: str) -> None:
        super().__init__(f"blob {digest} is in use by {user}")
        self.digest = digest
        self.user = user


class UnsupportedDigest(StorageError):
    """A well-formed digest of an algorithm the content store cannot verify (containerd 1.7 hashes
    every ingest with sha256 and refuses any other expected digest at commit)."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"unsupported digest algorithm {digest.split(':', 1)[0]}")
        self.digest = digest


def from_storage(err: StorageError) -> RegistryError:
    if isinstance(err, BlobInUse):
        # The spec's answer for a deletion the registry will not do (405 UNSUPPORTED); the store is
        # the host's, and its images must not lose a layer. 405 must say what is allowed.
        return RegistryError("UNSUPPORTED", 405,
                             f"blob {err.digest} is in use by {err.user}: the registry does not delete "
                             "content an image of the host needs; remove the image first",
                             detail={"digest": err.digest, "user": err.user}, headers={"Allow": "GET, HEAD"})
    if isinstance(err, UnsupportedDigest):
        return unsupported("only sha256 digests are supported (containerd's content store verifies "
                           "sha256 only)", detail={"digest": err.digest})
    raise TypeError(f"no HTTP answer for {type(err).__name__}")  # a bug: the middleware makes it a 500


def method_not_allowed(method: str) -> RegistryError:
    return RegistryError("UNSUPPORTED", 405, f"method {method} is not supported here")
too_many_requests = _factory("TOOMANYREQUESTS", 429, "too many requests")


def range_invalid(message: str, upload_range: str | None = None) -> RegistryError:
    """A chunk that does not start where the upload stands: 416, with the current Range so the
    client can resume (the spec asks for BLOB_UPLOAD_INVALID as the code)."""
    headers = {"Range": upload_range} if upload_range else {}
    return RegistryError("BLOB_UPLOAD_INVALID", 416, message, headers=headers)


def manifest_too_large(limit: int) -> RegistryError:
    return RegistryError("MANIFEST_INVALID", 413, f"manifest is larger than {limit} bytes")


def range_not_satisfiable(size: int) -> RegistryError:
    return RegistryError("RANGE_INVALID", 416, "requested range not satisfiable",
                         headers={"Content-Range": f"bytes */{size}"})


def unavailable(message: str) -> RegistryError:
    """containerd unreachable or busy: a condition the client may retry, not a bug."""
    return RegistryError("UNAVAILABLE", 503, message, headers={"Retry-After": "1"})
