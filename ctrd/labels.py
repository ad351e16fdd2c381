"""containerd label names that pussh and the registry set on content and images."""
from __future__ import annotations

# Garbage-collection references: content labelled so keeps its children alive.
GC_REF_CONTENT = "containerd.io/gc.ref.content"
UNCOMPRESSED = "containerd.io/uncompressed"  # a layer's diffID
DISTRIBUTION_SOURCE = "containerd.io/distribution.source"  # + ".<registry host>" = repository


def gc_refs(manifest: dict) -> dict[str, str]:
    """The GC reference labels for a manifest or index: `.config`, `.l.<i>` for layers and
    `.m.<i>` for an index's manifests, as containerd's own fetch sets them."""
    labels: dict[str, str] = {}
    if "manifests" in manifest:
        for i, m in enumerate(manifest.get("manifests") or []):
            labels[f"{GC_REF_CONTENT}.m.{i}"] = m["digest"]
    if isinstance(manifest.get("config"), dict) and "digest" in manifest["config"]:
        labels[f"{GC_REF_CONTENT}.config"] = manifest["config"]["digest"]
    for i, layer in enumerate(manifest.get("layers") or []):
        labels[f"{GC_REF_CONTENT}.l.{i}"] = layer["digest"]
    return labels
