"""Unpacking an image into a snapshotter, as containerd's own pull does, so that a Kubernetes node
(containerd + CRI, namespace k8s.io) can start containers from a pushed image without pulling it.

    async with Containerd(sock, namespace=CRI_NAMESPACE) as c:
        # blobs written with ctrd.labels.gc_refs on the manifest, image record created:
        await c.images.put(name, manifest_desc, cri_image_labels())
        res = await unpack(c, manifest, config)        # res.chain_ids, res.applied (newly committed)

Also here: the labels and names CRI gives images it pulled, and a read-only client for CRI's
ImageService (what `crictl images` / kubelet see)."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from proto import cri_pb2
from proto.cri_grpc import ImageServiceStub

from . import errors
from .labels import UNCOMPRESSED
from .snapshots import DEFAULT_SNAPSHOTTER
from .types import Descriptor

if TYPE_CHECKING:
    from .client import Containerd

CRI_NAMESPACE = "k8s.io"
# CRI marks the image records it manages (pkg/cri labels.ImageLabelKey / ImageLabelValue)
CRI_IMAGE_LABEL = "io.cri-containerd.image"
CRI_IMAGE_MANAGED = "managed"
# containerd's unpacker: snapshot label naming the chain ID a snapshot is (or will be) committed as
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
# layer annotations with this prefix are copied onto the layer's snapshot (snapshots.FilterInheritedLabels)
INHERITED_LABEL_PREFIX = "containerd.io/snapshot/"
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot"  # + ".<snapshotter>" on the config blob
_CLEANUP_TIMEOUT = 30.0


class UnpackError(errors.ContainerdError):
    """The image cannot be unpacked as given (layer count, diffID mismatch)."""


@dataclass(frozen=True)
class UnpackResult:
    snapshotter: str
    chain_ids: list[str]  # one per layer, in order; the last is the image's root filesystem
    applied: list[str]  # the chain IDs committed by this call (the others already existed)

    @property
    def top(self) -> str:
        return self.chain_ids[-1] if self.chain_ids else ""


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI image-spec chain IDs: chainID(0) = diffID(0), chainID(n) = sha256(chainID(n-1) + " " + diffID(n))."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def snapshot_gc_label(snapshotter: str = DEFAULT_SNAPSHOTTER) -> str:
    """The config-blob label that keeps an unpacked image's snapshots alive for garbage collection."""
    return f"{GC_REF_SNAPSHOT}.{snapshotter}"


def _layers_and_diff_ids(manifest: dict, config: dict) -> tuple[list[Descriptor], list[str]]:
    layers = manifest.get("layers")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(layers, list) or not isinstance(diff_ids, list):
        raise UnpackError("manifest has no layers list or config has no rootfs.diff_ids")
    if len(layers) != len(diff_ids):
        raise UnpackError(f"number of layers and diffIDs don't match: {len(layers)} != {len(diff_ids)}")
    descs = []
    for layer, diff_id in zip(layers, diff_ids):
        if not (isinstance(layer, dict) and isinstance(layer.get("digest"), str) and isinstance(diff_id, str)
                and diff_id.startswith("sha256:")):
            raise UnpackError(f"bad layer descriptor or diffID: {layer!r} / {diff_id!r}")
        descs.append(Descriptor(str(layer.get("mediaType", "")), layer["digest"], int(layer.get("size", 0)),
                                dict(layer.get("annotations") or {})))
    return descs, diff_ids


def _unique_key(chain_id: str) -> str:
    # containerd's own extraction key format ("extract-<unique> <chainID>"): recognisable in `ctr snapshots ls`
    return f"extract-{time.time_ns() % 1_000_000_000}-{secrets.token_urlsafe(4)} {chain_id}"


@contextlib.asynccontextmanager
async def _lease(ctr: "Containerd", lease: str | None) -> AsyncIterator[str]:
    if lease:
        yield lease
    else:
        # without a lease, GC may take a just-committed snapshot before the config label refers to it
        async with ctr.leases.temporary(expire=timedelta(hours=1)) as lid:
            yield lid


async def _remove_quietly(snaps, key: str) -> None:
    async def remove() -> None:
        for attempt in range(3):  # a failed Apply may still be letting go of the mounts
            try:
                await snaps.remove(key)
                return
            except errors.NotFound:
                return
            except errors.ContainerdError:
                await asyncio.sleep(0.2 * (attempt + 1))
    # shielded: a cancelled unpack must still take its active snapshot away
    task = asyncio.ensure_future(asyncio.wait_for(remove(), _CLEANUP_TIMEOUT))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(task), _CLEANUP_TIMEOUT)
        raise


async def unpack(ctr: "Containerd", manifest: dict, config: dict, snapshotter: str = DEFAULT_SNAPSHOTTER,
                 lease: str | None = None) -> UnpackResult:
    """Unpack the manifest's layers (already in the content store) into `snapshotter`, in order.

    Layers whose committed snapshot (named by chain ID) exists are skipped; each other layer gets
    Prepare(unique key, parent = previous chain ID) -> diff Apply -> Commit(chain ID). On any
    failure or cancellation the active snapshot is removed, so no half-applied layer remains.
    Finally the config blob gets `containerd.io/gc.ref.snapshot.<snapshotter>` = top chain ID,
    which keeps the snapshots alive as long as an image record refers to the manifest. Work
    happens under `lease` (a temporary one if none is given)."""
    layers, diff_ids = _layers_and_diff_ids(manifest, config)
    chains = chain_ids(diff_ids)
    config_digest = (manifest.get("config") or {}).get("digest")
    if not isinstance(config_digest, str):
        raise UnpackError("manifest has no config descriptor")
    snaps = ctr.snapshots(snapshotter)
    applied: list[str] = []
    async with _lease(ctr, lease) as lid:
        parent = ""
        for layer, diff_id, chain in zip(layers, diff_ids, chains):
            # Under the lease before it is looked at: a snapshot found committed (an earlier unpack's,
            # whose lease has ended) could otherwise be collected before its child is prepared on it.
            await ctr.leases.add_resource(lid, chain, f"snapshots/{snapshotter}")
            if await snaps.exists(chain) is None and await _apply_layer(ctr, snaps, layer, diff_id, chain, parent,
                                                                          lid):
                applied.append(chain)
            parent = chain
        if chains:
            await ctr.content.set_labels(config_digest, {snapshot_gc_label(snapshotter): chains[-1]})
    return UnpackResult(snapshotter, chains, applied)


async def _apply_layer(ctr: "Containerd", snaps, layer: Descriptor, diff_id: str, chain: str, parent: str,
                       lease: str) -> bool:
    """True if this call committed `chain`; False if another writer committed it meanwhile."""
    labels = {k: v for k, v in layer.annotations.items() if k.startswith(INHERITED_LABEL_PREFIX)}
    labels[SNAPSHOT_REF_LABEL] = chain
    key = _unique_key(chain)
    committed = False
    try:
        try:
            mounts = await snaps.prepare(key, parent, labels=labels, lease=lease)
        except errors.AlreadyExists:
            if await snaps.exists(chain) is not None:
                return False
            raise
        applied = await ctr.diff.apply(layer, mounts, lease=lease)
        if applied.digest != diff_id:
            raise UnpackError(f"layer {layer.digest} unpacked to {applied.digest}, config says diffID {diff_id}")
        try:
            await snaps.commit(chain, key, labels=labels, lease=lease)
        except errors.AlreadyExists:
            return False  # committed concurrently by someone else: same content, ours is dropped below
        committed = True
    finally:
        if not committed:
            await _remove_quietly(snaps, key)
    # the diffID is verified now: record it on the blob as containerd's unpacker does
    with contextlib.suppress(errors.NotFound):
        await ctr.content.set_labels(layer.digest, {UNCOMPRESSED: diff_id})
    return True


# -- what CRI (the kubelet's runtime API) expects ---------------------------------------------------------

def cri_image_labels() -> dict[str, str]:
    """The labels CRI puts on every image record it creates when it pulls."""
    return {CRI_IMAGE_LABEL: CRI_IMAGE_MANAGED}


def cri_image_names(name: str, target_digest: str, config_digest: str) -> list[str]:
    """The image records CRI creates for one pull of fully qualified `name` (e.g.
    docker.io/library/app:1): the image ID (config digest), the repo tag (when `name` has a tag)
    and the repo digest (repository@target digest), in CRI's order. All get cri_image_labels()."""
    repo, tag = name.split("@", 1)[0], None
    slash, colon = repo.rfind("/"), repo.rfind(":")
    if colon > slash:
        repo, tag = repo[:colon], repo[colon + 1:]
    names = [config_digest]
    if tag and "@" not in name:
        names.append(f"{repo}:{tag}")
    names.append(f"{repo}@{target_digest}")
    return names


@dataclass(frozen=True)
class CriImage:
    id: str  # the config digest
    repo_tags: list[str]
    repo_digests: list[str]
    size: int
    pinned: bool = False

    @classmethod
    def from_pb(cls, i: cri_pb2.Image) -> "CriImage":
        return cls(i.id, list(i.repo_tags), list(i.repo_digests), i.size, i.pinned)


class CriImages:
    """CRI's ImageService (runtime.v1) on containerd's socket: images as kubelet sees them.
    CRI always works in its own namespace (k8s.io), so no namespace metadata is sent."""

    def __init__(self, ctr: "Containerd") -> None:
        self._stub = ImageServiceStub(ctr.channel)

    async def list(self) -> list[CriImage]:
        with errors.mapped():
            resp = await self._stub.ListImages(cri_pb2.ListImagesRequest())
        return [CriImage.from_pb(i) for i in resp.images]

    async def status(self, ref: str) -> CriImage | None:
        """None when CRI does not know `ref` (a name, name@digest or image ID)."""
        with errors.mapped():
            resp = await self._stub.ImageStatus(cri_pb2.ImageStatusRequest(image=cri_pb2.ImageSpec(image=ref)))
        return CriImage.from_pb(resp.image) if resp.HasField("image") else None
