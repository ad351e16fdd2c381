"""Servers whose Docker keeps the classic image store (overlay2 & co.): the image goes straight into
Docker with `docker load`, fed over SSH a docker-save tar that holds only the layers Docker lacks.

Why not the registry + `docker pull`: the registry keeps blobs in containerd and refuses a manifest
whose blobs it lacks, so skipping what Docker already has would need a second copy of every layer kept
in containerd. `docker load` checks each layer's chain ID against Docker's own layer store and reads
the layer file only when the chain is missing, so a tar without those files loads fine: nothing is
sent twice and nothing is left behind outside Docker's store. The price: one stream (no parallel
uploads) and no resume inside a load (layers of earlier completed pushes are still skipped)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import tarfile
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from oci.manifest import Desc

from .errors import PusshError
from .plan import Plan
from .progress import UI
from .remote import Server, check_space, explain_failure
from .source import ImageSource
from .ssh import Connection
from .sshlib import asyncssh

if TYPE_CHECKING:
    from .options import HostResult

BLOCK = 512


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Docker's chain IDs: chain[0] = diff[0]; chain[i] = sha256(chain[i-1] + " " + diff[i])."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


async def server_chains(conn: Connection, server: Server) -> set[str]:
    """Chain IDs of every layer stack Docker on the server has (from all images' RootFS.Layers)."""
    ids = await conn.run([*server.docker, "image", "ls", "-aq", "--no-trunc"])
    images = sorted(set(ids.stdout.split()))
    if not images:
        return set()
    res = await conn.run([*server.docker, "image", "inspect", "--format", "{{json .RootFS.Layers}}", *images])
    chains: set[str] = set()
    for line in res.stdout.splitlines():
        try:
            chains.update(chain_ids(json.loads(line) or []))
        except ValueError:
            continue
    return chains


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _pad(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


async def load_image(conn: Connection, server: Server, source: ImageSource, plan: Plan, repo_tag: str,
                     ui: UI, result: "HostResult", delta: bool | None = None) -> None:
    """Stream a docker-save tar (manifest.json, config, missing layers) into `docker load` on the server.
    `delta`: rebuild missing layers on the server from its current image's (None: where worth it)."""
    manifests = plan.images
    if len(manifests) != 1:
        raise PusshError(f"{conn.label}: a classic-store Docker holds one platform per tag: choose one with --platform")
    manifest = manifests[0]
    config_body = await source.read_small(manifest.config.digest)
    diff_ids = list(json.loads(config_body).get("rootfs", {}).get("diff_ids") or [])
    if len(diff_ids) != len(manifest.layers):
        raise PusshError(f"{conn.label}: the image config lists {len(diff_ids)} layers, the manifest {len(manifest.layers)}")
    current = await conn.run([*server.docker, "image", "inspect", "--format", "{{.Id}} {{json .RootFS.Layers}}",
                              repo_tag])
    current_id, _, current_layers = current.stdout.strip().partition(" ")
    if current.ok and current_id == manifest.config.digest:
        result.blobs_skipped += len(manifest.layers) + 1  # already there under this name: nothing to do
        result.bytes_skipped += sum(l.size for l in manifest.layers) + manifest.config.size
        return
    have = await server_chains(conn, server)
    chains = chain_ids(diff_ids)
    layers: list[tuple[str, Desc | None]] = []
    for diff, chain, layer in zip(diff_ids, chains, manifest.layers):
        hexd = diff.split(":", 1)[1]
        layers.append((f"{hexd}/layer.tar", None if chain in have else layer))
    config_name = manifest.config.digest.split(":", 1)[1] + ".json"
    mf = json.dumps([{"Config": config_name, "RepoTags": [repo_tag], "Layers": [n for n, _ in layers]}]).encode()

    sent = [l for _, l in layers if l is not None]
    skipped = [m for (_, l), m in zip(layers, manifest.layers) if l is None]
    result.blobs_skipped += len(skipped)
    result.bytes_skipped += sum(l.size for l in skipped)
    async with contextlib.AsyncExitStack() as stack:
        rebuilt: dict[int, int] = {}  # position -> size of the layer the server rebuilt from a delta
        helper = None
        if delta is not False and sent:
            base_layers = _json_list(current_layers) if current.ok else await _repository_layers(conn, server, source)
            if base_layers:
                rebuilt, helper = await _delta(stack, conn, server, source, manifest.layers, diff_ids, layers,
                                               base_layers, delta, ui, result)
        await _load(conn, server, source, layers, rebuilt, helper, config_name, config_body,
                    mf, ui, result)
    result.blobs_sent += len(sent) + 1
    result.bytes_sent += sum(l.size for i, (_, l) in enumerate(layers) if l is not None and i not in rebuilt)
    result.bytes_sent += len(config_body)
    result.sent += [manifest.config.digest] + [l.digest for l in sent]


async def _repository_layers(conn: Connection, server: Server, source: ImageSource) -> list[str]:
    """The diffIDs of the newest image of the push's repository on the server (another tag of it),
    for a tag that is new there: the delta's base."""
    repo = source.ref.with_tag("x").familiar.rsplit(":", 1)[0]
    ids = await conn.run([*server.docker, "image", "ls", "-q", "--no-trunc", repo])
    newest = ids.stdout.split()[:1]
    if not ids.ok or not newest:
        return []
    res = await conn.run([*server.docker, "image", "inspect", "--format", "{{json .RootFS.Layers}}", newest[0]])
    return _json_list(res.stdout.strip()) if res.ok else []


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


async def _delta(stack: contextlib.AsyncExitStack, conn: Connection, server: Server, source: ImageSource,
                 descs: list[Desc], diff_ids: list[str], layers: list[tuple[str, Desc | None]],
                 server_diff_ids: list[str], forced: bool | None, ui: UI, result: "HostResult"):
    """The missing layers the server rebuilds from its current image's (pussh.delta.classic)."""
    from .delta import classic as delta_classic  # only where a delta is tried
    from .delta.client import DeltaFailed
    missing = [i for i, (_, l) in enumerate(layers) if l is not None]
    tries = delta_classic.worth_trying(descs, diff_ids, missing, server_diff_ids, forced)
    if not tries:
        return {}, None
    try:
        helper = await stack.enter_async_context(delta_classic.session(conn, server))
    except DeltaFailed as err:
        ui.line(f"{conn.label}: no delta ({err}); sending the layers whole")
        return {}, None
    rebuilt = await delta_classic.rebuild(helper, conn, source, descs, diff_ids, tries, chain_ids(server_diff_ids),
                                          server.docker_root, forced, ui, result)
    return rebuilt, helper


async def _load(conn: Connection, server: Server, source: ImageSource, layers: list[tuple[str, Desc | None]],
                rebuilt: dict[int, int], helper, config_name: str, config_body: bytes, mf: bytes, ui: UI,
                result: "HostResult") -> None:
    """The docker-save stream into docker load: through the delta helper when it rebuilt layers
    (their headers only, the helper puts the rebuilt tar after each), else straight."""
    sent = [l for i, (_, l) in enumerate(layers) if l is not None and i not in rebuilt]

    async def tar_stream() -> AsyncIterator[tuple[bytes, Desc | None]]:
        yield _header(config_name, len(config_body)) + config_body + _pad(len(config_body)), None
        for i, (name, layer) in enumerate(layers):
            if layer is None:
                continue
            if i in rebuilt:  # the helper puts the layer there
                yield _header(name, rebuilt[i]), None
                continue
            yield _header(name, layer.size), None
            async for chunk in source.opener(layer.digest)(0):
                yield chunk, layer
            yield _pad(layer.size), None
        yield _header("manifest.json", len(mf)) + mf + _pad(len(mf)), None
        yield b"\0" * (2 * BLOCK), None

    await check_space(conn, server, sum(l.size for l in sent))
    bar = ui.bar(f"{conn.label} docker load", sum(l.size for l in sent))
    if rebuilt:
        files = {layers[i][0]: layers[i][0].split("/", 1)[0] for i in rebuilt}  # (the helper names them by diffID)
        proc = await helper.start_load(server.docker, files)
    else:
        proc = await conn.conn.create_process(shlex.join([*server.docker, "load", "-q"]), encoding=None,
                                              stderr=asyncssh.STDOUT)
    try:
        try:
            async for chunk, layer in tar_stream():
                proc.stdin.write(chunk)
                await proc.stdin.drain()
                if layer is not None:
                    bar.advance(len(chunk))
            proc.stdin.write_eof()
        except (BrokenPipeError, ConnectionError, asyncssh.Error):
            pass  # docker load stopped reading: its message below says why
        out = (await proc.stdout.read()).decode(errors="replace")
        await proc.wait_closed()
    finally:
        proc.close()
    if proc.exit_status != 0:
        last = (out.strip().splitlines() or [f"exit status {proc.exit_status}"])[-1]
        if "no space left" in out.lower():
            raise PusshError(f"{conn.label}: the server's disk is full (docker load: {last})")
        raise await explain_failure(conn, server, PusshError(f"{conn.label}: docker load on the server failed: {last}"))
    bar.finish("loaded")
