"""How an image is kept in containerd, once for every writer of images (the registry, pussh's direct
path): the labels that manifests, configs and layers carry, and the image record's name.

containerd's own pull sets the same labels: GC references from a manifest to its children, the
layer's diffID (`containerd.io/uncompressed`, which Docker's and CRI's unpackers use) and the
distribution source (which Spegel and containerd's pusher use to find a blob's origin).
"""
from __future__ import annotations

import json
from collections.abc import Mapping

from oci import digest as D
from oci import manifest as M
from oci import mediatypes as MT

from .labels import DISTRIBUTION_SOURCE, UNCOMPRESSED, gc_refs

# What the content store cannot tell: a manifest's media type, for GET by digest.
LABEL_MEDIA_TYPE = "pussh.registry.mediatype"
CONFIG_TYPES = frozenset({MT.OCI_CONFIG, MT.DOCKER_CONFIG})


def image_name(domain: str, path: str, tag: str) -> str:
    """The image record's name, as Docker and CRI name it (`docker.io/library/myapp:1`)."""
    return f"{domain}/{path}:{tag}"


def source_label(domain: str) -> str:
    return f"{DISTRIBUTION_SOURCE}.{domain}"


def manifest_labels(parsed: M.Parsed, domain: str, path: str) -> dict[str, str]:
    """Labels of a stored manifest or index: GC references to its children, its media type and
    where it came from."""
    labels = gc_refs(parsed.raw, parsed.is_index)
    labels[LABEL_MEDIA_TYPE] = parsed.media_type
    labels[source_label(domain)] = path
    return labels


def diff_ids(parsed: M.Parsed, config_body: bytes | None) -> list[str]:
    """The layers' diffIDs from the image config, by position; [] when the config is not an image
    config we understand (then only the distribution source is labelled)."""
    if config_body is None or parsed.config is None or parsed.config.media_type not in CONFIG_TYPES:
        return []
    try:
        ids = json.loads(config_body).get("rootfs", {}).get("diff_ids") or []
    except (ValueError, UnicodeDecodeError, AttributeError):
        return []
    if isinstance(ids, list) and len(ids) == len(parsed.layers) and all(isinstance(i, str) for i in ids):
        return ids
    return []


def child_labels(parsed: M.Parsed, config_body: bytes | None) -> dict[str, str | None]:
    """digest -> diffID (None for the config and for layers without one), each child once."""
    ids = diff_ids(parsed, config_body)
    out: dict[str, str | None] = {}
    for i, d in enumerate(parsed.layers):
        out.setdefault(d.digest, ids[i] if ids else None)
    if parsed.config is not None:
        out.setdefault(parsed.config.digest, None)
    return out


def missing_labels(have: Mapping[str, str], domain: str, path: str, diff_id: str | None) -> dict[str, str]:
    """The labels to add to a blob that has `have`, so that it carries this repository among its
    distribution sources and its diffID. Empty: nothing to update."""
    key = source_label(domain)
    want: dict[str, str] = {}
    sources = [s for s in have.get(key, "").split(",") if s]
    if path not in sources:
        want[key] = ",".join(sources + [path])
    if diff_id and D.is_valid(diff_id) and have.get(UNCOMPRESSED) != diff_id:
        want[UNCOMPRESSED] = diff_id
    return want
