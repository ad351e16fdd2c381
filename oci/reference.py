"""Image references, parsed and normalized the way Docker does (`myapp:1` is
`docker.io/library/myapp:1`)."""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
OFFICIAL_PREFIX = "library/"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}\Z", re.ASCII)
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}\Z")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}\Z")
MAX_NAME = 255


class InvalidReference(ValueError):
    pass


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str  # repository path inside the domain, e.g. "library/myapp"
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """Fully qualified repository name, e.g. docker.io/library/myapp."""
        return f"{self.domain}/{self.path}"

    @property
    def name(self) -> str:
        """The fully qualified reference as containerd's image store names it."""
        out = self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def familiar(self) -> str:
        """The short form Docker prints (myapp:1 rather than docker.io/library/myapp:1)."""
        path = self.path
        if self.domain == DEFAULT_DOMAIN:
            path = path.removeprefix(OFFICIAL_PREFIX)
            out = path
        else:
            out = f"{self.domain}/{path}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def with_tag(self, tag: str) -> "Reference":
        return Reference(self.domain, self.path, tag, None)


def parse(ref: str, *, default_tag: str | None = "latest") -> Reference:
    """Parse and normalize; a reference with neither tag nor digest gets `default_tag`."""
    if not ref or len(ref) > 4096:
        raise InvalidReference(f"invalid reference format: {ref!r}")
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise InvalidReference(f"invalid digest in reference: {ref!r}")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not TAG_RE.match(tag):
            raise InvalidReference(f"invalid tag in reference: {ref!r}")
    domain, path = split_domain(rest)
    if not NAME_RE.match(path):
        hint = " (repository names must be lowercase)" if path.lower() != path else ""
        raise InvalidReference(f"invalid reference format: {ref!r}{hint}")
    if len(domain) + 1 + len(path) > MAX_NAME:
        raise InvalidReference(f"repository name too long: {ref!r}")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(domain, path, tag, digest)


def split_domain(name: str) -> tuple[str, str]:
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _DOMAIN_RE.match(first):
            raise InvalidReference(f"invalid registry host in reference: {name!r}")
        domain, path = first, remainder
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def is_valid_repository(name: str) -> bool:
    """A registry URL's repository name (the part between /v2/ and /blobs|manifests|tags)."""
    return len(name) <= MAX_NAME and bool(NAME_RE.match(name))
