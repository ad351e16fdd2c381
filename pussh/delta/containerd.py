"""Delta into a server's containerd (the direct path). A manifest names the *compressed* layer,
and a blob compressed elsewhere cannot in general be redone byte for byte on the server. So the
helper rebuilds the uncompressed tar (checked against the diffID) and gzips it itself, with
BlockGzip, straight into the content store's blob directory:
- a layer pussh compressed itself (a classic-store client's, BlockGzip too) comes out as the very
  local blob: the push is exact, and the delta is on by default where it is worth it;
- any other layer (opt-in, --delta) comes out as a blob of the server's own, and the push writes a
  manifest (and index) naming it: the config, the diffIDs and so the filesystem are the local
  image's, the manifest digest is not."""
from __future__ import annotations

import copy
import json
import posixpath
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ctrd import unpack
from oci import digest as D
from oci import manifest as M
from oci import mediatypes as MT

from ..dest_containerd import ContainerdDestination
from ..errors import PusshError
from ..plan import ATTESTATION_REF, Plan
from ..progress import UI, human_bytes
from ..remote import Server
from ..source import ImageSource
from ..ssh import Connection
from . import when
from .client import DeltaFailed, LayerDelta, Session

if TYPE_CHECKING:
    from ..options import HostResult


async def server_image(dest: ContainerdDestination, current: str, platform: M.Platform) -> M.Parsed | None:
    """The manifest of the server's current image for `platform` (the tag's target, an index or a manifest)."""
    parsed = M.parse(await dest.read_blob(current))
    if parsed.is_index:
        entries = [m for m in parsed.manifests if m.platform is not None and platform.matches(m.platform)]
        if not entries:
            return None
        parsed = M.parse(await dest.read_blob(entries[0].digest), entries[0].media_type)
    return parsed


async def server_layers(dest: ContainerdDestination, current: str, platform: M.Platform) -> list[M.Desc]:
    image = await server_image(dest, current, platform)
    return list(image.layers) if image is not None else []


async def chain_ids(dest: ContainerdDestination, image: M.Parsed) -> list[str]:
    """The chain IDs of the server image's layers (the names of their snapshots), [] if its config
    does not say."""
    try:
        config = json.loads(await dest.read_blob(image.config.digest)) if image.config else {}
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    except (ValueError, PusshError):
        return []
    return unpack.chain_ids(diff_ids) if len(diff_ids) == len(image.layers) else []


async def has_zstd_layers(dest: ContainerdDestination, current: str, platform: M.Platform) -> bool:
    """Whether the server's image `current` has zstd layers (for `platform`)."""
    try:
        return any(l.media_type == MT.OCI_LAYER_ZSTD for l in await server_layers(dest, current, platform))
    except (M.InvalidManifest, PusshError):
        return False  # (not readable: nothing to keep)


async def rewrite(conn: Connection, server: Server, dest: ContainerdDestination, source: ImageSource, plan: Plan,
                  current: str | None, forced: bool | None, ui: UI, result: "HostResult") -> Plan:
    """The plan with every layer the helper rebuilt replaced by the blob it stored (and the
    manifests above it rewritten); the plan as it was where nothing was rebuilt."""
    if not plan.images or not plan.platforms:
        return plan
    try:
        current = current or await dest.repository_image()
        base_image = await server_image(dest, current, plan.platforms[0]) if current else None
        root = await dest.content_dir()
    except (M.InvalidManifest, DeltaFailed) as err:
        ui.debug(f"{conn.label}: no delta: {err}")
        return plan
    if base_image is None or not base_image.layers or root is None:
        return plan
    base_layers = list(base_image.layers)
    chains: list[str] | None = None  # asked once a layer is worth a delta
    missing = {b.digest for b in await dest.missing(plan.blobs)}
    exact_only = forced is None
    swaps: dict[str, M.Desc] = {}
    t0 = time.monotonic()
    session: Session | None = None
    try:
        for image in plan.images:
            diff_ids = json.loads(await source.read_small(image.config.digest)).get("rootfs", {}).get("diff_ids") \
                if image.config else None
            if not diff_ids or len(diff_ids) != len(image.layers):
                continue
            for i, layer in sorted(enumerate(image.layers), key=lambda p: -p[1].size):
                if layer.digest not in missing or layer.digest in swaps:
                    continue
                if exact_only and not source.rebuildable(layer):
                    continue
                rate = when.link_rate(result.bytes_sent, time.monotonic() - t0)
                if not when.worth_it(layer.size, rate, forced):
                    continue
                j = min(i, len(base_layers) - 1)
                base = base_layers[j]
                record = LayerDelta(digest=layer.digest, diff_id=diff_ids[i], base=base.digest)
                if chains is None:
                    chains = await chain_ids(dest, base_image)
                # Its unpacked snapshot where the server has one (Docker unpacks an image when a
                # container of it first runs): read as files, whatever the blob's compression.
                unpacked = await dest.layer_dir(chains[j]) if chains else None
                where = {"dir": unpacked} if unpacked else {"blob": f"{root}/blobs/sha256/{D.hex_of(base.digest)}"}
                result.delta.append(record.to_json())
                try:
                    if session is None:
                        session = await Session.open(conn, server.sudo, server.python, posixpath.dirname(root))
                    made = await session.layer(where, source.opener(layer.digest), layer, diff_ids[i],
                                               D.hex_of(diff_ids[i]), record, gzip=True)
                    if exact_only and made != layer.digest:
                        raise DeltaFailed(f"the server's gzip made {made}, not the local blob (its zlib is "
                                          "not this machine's): only --delta stores a blob of its own")
                    digest, size = await session.store(D.hex_of(diff_ids[i]), f"{root}/blobs/sha256")
                    await dest.adopt(digest, size, diff_ids[i])
                except DeltaFailed as err:
                    record.error = str(err)
                    ui.line(f"{conn.label}: delta of {layer.digest[:19]} failed ({err}); sending it whole")
                else:
                    record.rebuilt = True
                    record.exact = digest == layer.digest
                    if not record.exact:
                        record.stored_digest = digest
                        swaps[layer.digest] = M.Desc(_gzip_type(layer.media_type), digest, size)
                    ui.debug(f"{conn.label}: {layer.digest[:19]} rebuilt on the server as {digest[:19]} from "
                             f"{human_bytes(record.bytes_sent)} ({human_bytes(record.shared)} from its base)")
                result.bytes_sent += record.bytes_sent
                result.delta[-1] = record.to_json()
    finally:
        if session is not None:
            await session.close()
    return swap_layers(plan, swaps) if swaps else plan


def _gzip_type(media_type: str) -> str:
    return MT.DOCKER_LAYER_GZIP if media_type.startswith("application/vnd.docker.") else MT.OCI_LAYER_GZIP


def swap_layers(plan: Plan, swaps: dict[str, M.Desc]) -> Plan:
    """The plan with layer blobs replaced (old digest -> new descriptor): each manifest naming one
    is rewritten, and each index naming a rewritten manifest, bottom-up, the root last."""
    renamed: dict[str, M.Desc] = {}
    manifests: list[tuple[M.Desc, bytes]] = []
    chosen = [img.raw for img in plan.images]
    images: list[M.Parsed] = []
    for desc, body in plan.manifests:
        parsed = M.parse(body, desc.media_type)
        raw = copy.deepcopy(parsed.raw)
        changed = False
        if parsed.is_index:
            for entry in raw.get("manifests", []):
                new = renamed.get(entry.get("digest"))
                if new is not None:
                    entry["digest"], entry["size"] = new.digest, new.size
                    changed = True
                ref = (entry.get("annotations") or {}).get(ATTESTATION_REF)
                if ref in renamed:
                    entry["annotations"][ATTESTATION_REF] = renamed[ref].digest
                    changed = True
        else:
            for layer in raw.get("layers", []):
                new = swaps.get(layer.get("digest"))
                if new is not None:
                    layer.update(mediaType=new.media_type, digest=new.digest, size=new.size)
                    changed = True
        if changed:
            new_body = json.dumps(raw, separators=(",", ":")).encode()
            new_desc = replace(desc, digest=D.of(new_body), size=len(new_body))
            renamed[desc.digest] = new_desc
            desc, body = new_desc, new_body
        manifests.append((desc, body))
        if parsed.raw in chosen:
            images.append(M.parse(body, desc.media_type))
    blobs = [swaps.get(b.digest, b) for b in plan.blobs]
    return Plan(manifests[-1][0], manifests, blobs, list(plan.platforms), images)
