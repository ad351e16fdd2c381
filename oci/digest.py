"""Content digests: validation and incremental hashing (hashlib does the work)."""
from __future__ import annotations

import hashlib
import re

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")


class InvalidDigest(ValueError):
    pass


class UnsupportedDigest(InvalidDigest):
    """Well-formed, but with an algorithm we do not implement."""


def validate(digest: str) -> str:
    if _DIGEST.match(digest):
        return digest
    if _ANY_DIGEST.match(digest) and not digest.startswith(("sha256:", "sha512:")):
        raise UnsupportedDigest(f"unsupported digest algorithm: {digest.split(':', 1)[0]}")
    raise InvalidDigest(f"invalid digest: {digest!r}")


def is_valid(digest: str) -> bool:
    return bool(_DIGEST.match(digest))


def of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hasher(digest: str) -> "hashlib._Hash":
    """A fresh hash object of the digest's algorithm."""
    return hashlib.new(digest.split(":", 1)[0])


def hex_of(digest: str) -> str:
    return digest.split(":", 1)[1]
