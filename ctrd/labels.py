"""containerd label names that pussh and the registry set on content and images."""
from __future__ import annotations

# Garbage-collection references: content labelled so keeps its children alive.
GC_REF_CONTENT = "containerd.io/gc.ref.content"
UNCOMPRESSED = "containerd.io/uncompressed"  # a layer's diffID
DISTRIBUTION_SOURCE = "containerd.io/distribution.source"  # + ".<registry host>" = repository
# Image record labels naming the record's reference (dropped from Docker's dangling copy of it)
IMAGE_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"
DANGLING_PREFIX = "moby-dangling@"  # + the target digest: Docker's record of a replaced image


def gc_refs(manifest: dict, is_index: bool | None = None) -> dict[str, str]:
    """The GC reference labels for a manifest or index: `.config`, `.l.<i>` for layers and
    `.m.<i>` for an index's manifests, as containerd's own fetch sets them. A manifest (it has a
    config) refers to its config and layers only, an index to its manifests only, as containerd's
    image handlers see them (`is_index` from the parsed media type; guessed when not given);
    entries that are not descriptors are skipped."""
    def digest(d: object) -> str | None:
        return d["digest"] if isinstance(d, dict) and isinstance(d.get("digest"), str) else None

    def entries(key: str) -> list:
        v = manifest.get(key)
        return v if isinstance(v, list) else []

    labels: dict[str, str] = {}
    if is_index is None:
        is_index = "index" in str(manifest.get("mediaType")) or "list" in str(manifest.get("mediaType")) \
            or not isinstance(manifest.get("config"), dict)
    if not is_index:
        if digest(manifest.get("config")):
            labels[f"{GC_REF_CONTENT}.config"] = manifest["config"]["digest"]
        for i, layer in enumerate(entries("layers")):
            if digest(layer):
                labels[f"{GC_REF_CONTENT}.l.{i}"] = layer["digest"]
    else:
        for i, m in enumerate(entries("manifests")):
            if digest(m):
                labels[f"{GC_REF_CONTENT}.m.{i}"] = m["digest"]
    return labels
