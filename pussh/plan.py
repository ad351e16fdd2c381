"""What to send for the chosen platforms: the manifests (bottom-up, root last) and the blobs they
need. An index whose chosen platforms are only part of it becomes a smaller index of just those."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from oci import digest as D
from oci import manifest as M

from .errors import PusshError, UsageError
from .source import ImageSource

ATTESTATION_REF = "vnd.docker.reference.digest"  # buildx attestation manifest -> the manifest it describes


@dataclass
class Plan:
    root: M.Desc  # what the tag points at
    manifests: list[tuple[M.Desc, bytes]]  # in push order: children first, root last
    blobs: list[M.Desc]  # configs and layers, each digest once
    platforms: list[M.Platform] = field(default_factory=list)
    images: list[M.Parsed] = field(default_factory=list)  # the chosen platforms' manifests (no attestations)

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs)


def _platform_of_config(body: bytes) -> M.Platform | None:
    try:
        cfg = json.loads(body)
        return M.Platform(str(cfg["os"]), M.normalize_arch(str(cfg["architecture"])), str(cfg.get("variant") or ""))
    except (ValueError, KeyError, TypeError):
        return None


def _fmt(platforms: list[M.Platform]) -> str:
    return ", ".join(str(p) for p in platforms) or "none"


async def make_plan(source: ImageSource, wanted: list[M.Platform], explicit: bool, root: M.Desc | None = None) -> Plan:
    """`wanted`: the --platform values, or the server's platform (explicit=False). `root`: the
    descriptor to start from (default: the source's)."""
    root = root or source.root
    body = await source.read_small(root.digest)
    parsed = M.parse(body, root.media_type)
    if not parsed.is_index:
        manifest = await _manifest(source, root, body, parsed)
        plat = _platform_of_config(await source.read_small(parsed.config.digest)) if parsed.config else None
        if explicit and plat is not None and not any(w.matches(plat) for w in wanted):
            raise UsageError(f"--platform {_fmt(wanted)} is not in the image {source.ref.familiar} (it is {plat})")
        return Plan(root, [manifest], _unique(parsed.children()), [plat] if plat else [], [parsed])

    entries = [m for m in parsed.manifests if m.platform is not None and not _is_attestation(m)]
    chosen: list[M.Desc] = []
    for w in wanted:
        match = [m for m in entries if m.platform is not None and w.matches(m.platform)]
        if not match:
            if explicit:
                raise UsageError(f"--platform {w} is not in the image {source.ref.familiar} "
                                 f"(it has {_fmt([m.platform for m in entries if m.platform])})")
            raise PusshError(f"the image {source.ref.familiar} has no {w} variant for the server "
                             f"(it has {_fmt([m.platform for m in entries if m.platform])}); choose one with --platform")
        present = [m for m in match if await source.has(m.digest)]
        if not present:
            raise PusshError(f"platform {w} of {source.ref.familiar} is not present locally "
                             f"(pull it first, e.g. docker pull --platform {w} {source.ref.familiar})")
        for m in present[:1]:
            if m not in chosen:
                chosen.append(m)
    # Attestations of the chosen manifests come along when they are here.
    chosen_digests = {m.digest for m in chosen}
    for m in parsed.manifests:
        if _is_attestation(m) and m.annotations.get(ATTESTATION_REF) in chosen_digests and await source.has(m.digest):
            chosen.append(m)

    manifests: list[tuple[M.Desc, bytes]] = []
    blobs: list[M.Desc] = []
    images: list[M.Parsed] = []
    for m in chosen:
        mbody = await source.read_small(m.digest)
        mparsed = M.parse(mbody, m.media_type)
        if mparsed.is_index:
            raise PusshError(f"nested indexes are not supported ({m.digest})")
        manifests.append(await _manifest(source, m, mbody, mparsed))
        blobs.extend(mparsed.children())
        if not _is_attestation(m):
            images.append(mparsed)
    if len(chosen) == len(parsed.manifests):
        root_entry = (root, body)
    else:
        raw = dict(parsed.raw)
        raw["manifests"] = [m.to_json() for m in chosen]
        raw.setdefault("mediaType", root.media_type)
        new_body = json.dumps(raw, separators=(",", ":")).encode()
        root_entry = (M.Desc(root.media_type, D.of(new_body), len(new_body)), new_body)
    manifests.append(root_entry)
    platforms = [m.platform for m in chosen if m.platform and not _is_attestation(m)]
    return Plan(root_entry[0], manifests, _unique(blobs), platforms, images)


async def _manifest(source: ImageSource, desc: M.Desc, body: bytes, parsed: M.Parsed) -> tuple[M.Desc, bytes]:
    missing = [c.digest for c in parsed.children() if not await source.has(c.digest)]
    if missing:
        raise PusshError(f"the local image {source.ref.familiar} is incomplete: blob {missing[0]} is missing "
                         "from the local content store")
    return desc, body


def _is_attestation(m: M.Desc) -> bool:
    return m.annotations.get("vnd.docker.reference.type") == "attestation-manifest" or (
        m.platform is not None and m.platform.os == "unknown")


def _unique(descs: list[M.Desc]) -> list[M.Desc]:
    seen: set[str] = set()
    out = []
    for d in descs:
        if d.digest not in seen:
            seen.add(d.digest)
            out.append(d)
    return out
