"""Manifests and indexes: parse, list children, choose platforms."""
from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from . import mediatypes


class InvalidManifest(ValueError):
    pass


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: "Platform") -> bool:
        return (
            self.os == other.os
            and self.architecture == other.architecture
            and (not self.variant or not other.variant or self.variant == other.variant)
        )


def parse_platform(text: str) -> Platform:
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"invalid platform {text!r}: use os/arch[/variant], e.g. linux/amd64")
    return Platform(parts[0], normalize_arch(parts[1]), parts[2] if len(parts) == 3 else "")


def normalize_arch(arch: str) -> str:
    return {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "i386": "386"}.get(arch, arch)


def host_platform() -> Platform:
    return Platform("linux", normalize_arch(_platform.machine().lower()))


@dataclass(frozen=True)
class Desc:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Desc":
        # JSON types as the OCI Go structs have them: a stored manifest Docker or containerd cannot
        # unmarshal (a size "12" or 1.5, a list for a string) would be an unreadable image there.
        if not isinstance(d, dict):
            raise InvalidManifest(f"invalid descriptor: {d!r:.80} is not an object")
        p = d.get("platform")
        if not (isinstance(d.get("mediaType"), str) and isinstance(d.get("digest"), str)
                and type(d.get("size")) is int and d["size"] >= 0 and _str_map(d.get("annotations"))
                and _opt_str(d.get("artifactType")) and _str_list(d.get("urls"))
                and (p is None or isinstance(p, dict) and all(_opt_str(p.get(k)) for k in _PLATFORM_KEYS)
                     and _str_list(p.get("os.features")))):
            raise InvalidManifest(f"invalid descriptor: {json.dumps(d)[:200]}")
        plat = Platform(p.get("os") or "", p.get("architecture") or "", p.get("variant") or "") if p else None
        return cls(d["mediaType"], d["digest"], d["size"], plat, dict(d.get("annotations") or {}),
                   d.get("artifactType") or "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            out["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
        if self.annotations:
            out["annotations"] = self.annotations
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


@dataclass(frozen=True)
class Parsed:
    """A manifest or index body, with what it points at."""

    media_type: str
    raw: dict[str, Any]
    config: Desc | None
    layers: list[Desc]
    manifests: list[Desc]
    subject: Desc | None
    artifact_type: str

    @property
    def is_index(self) -> bool:
        return mediatypes.is_index(self.media_type)

    def children(self) -> list[Desc]:
        return ([self.config] if self.config else []) + self.layers + self.manifests


_PLATFORM_KEYS = ("os", "architecture", "variant", "os.version")


def _opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _str_map(v: Any) -> bool:
    return v is None or isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def _str_list(v: Any) -> bool:
    return v is None or isinstance(v, list) and all(isinstance(x, str) for x in v)


def parse(body: bytes, media_type: str | None = None) -> Parsed:
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: nesting too deep
        raise InvalidManifest(f"manifest is not valid JSON: {type(err).__name__}: {err}"[:300]) from None
    if not isinstance(raw, dict):
        raise InvalidManifest("manifest must be a JSON object")
    if not (_opt_str(raw.get("mediaType")) and _opt_str(raw.get("artifactType")) and _str_map(raw.get("annotations"))
            and (raw.get("subject") is None or isinstance(raw["subject"], dict))):
        raise InvalidManifest("mediaType, artifactType, annotations or subject of the wrong JSON type")
    mt = raw.get("mediaType") or media_type or ""
    if not mt:
        mt = mediatypes.OCI_INDEX if "manifests" in raw else mediatypes.OCI_MANIFEST
    if media_type and raw.get("mediaType") and raw["mediaType"] != media_type:
        raise InvalidManifest(f"mediaType {raw['mediaType']!r} does not match Content-Type {media_type!r}")
    if mt not in mediatypes.ALL_MANIFESTS:
        raise InvalidManifest(f"unsupported manifest media type {mt!r}")
    if type(raw.get("schemaVersion")) is not int or raw["schemaVersion"] != 2:
        raise InvalidManifest("schemaVersion must be 2")
    def descs(key: str) -> list[Desc]:
        v = raw.get(key)
        if v is None:
            return []
        if not isinstance(v, list):  # {} or "" as well: Go cannot read them as a list
            raise InvalidManifest(f"{key} must be a list")
        return [Desc.from_json(d) for d in v]
    # containerd's reader (images.validateMediaType) refuses a manifest with any "manifests" key,
    # an index with any "config" or "layers" key (null included), and schema 1's "fsLayers".
    stray = ("fsLayers", "manifests") if mediatypes.is_manifest(mt) else ("fsLayers", "config", "layers")
    if any(k in raw for k in stray):
        raise InvalidManifest(f"a {mt} must not have {', '.join(k for k in stray if k in raw)}")
    config = None
    if mediatypes.is_manifest(mt):
        if not isinstance(raw.get("config"), dict):
            raise InvalidManifest("manifest has no config descriptor")
        config = Desc.from_json(raw["config"])
        layers, manifests = descs("layers"), []
    else:
        layers, manifests = [], descs("manifests")
    subject = Desc.from_json(raw["subject"]) if isinstance(raw.get("subject"), dict) else None
    artifact_type = str(raw.get("artifactType") or (config.media_type if config else "") or "")
    return Parsed(mt, raw, config, layers, manifests, subject, artifact_type)
