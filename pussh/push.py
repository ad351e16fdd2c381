"""One push, top to bottom: local image -> SSH -> server checks -> registry container -> tunnel ->
HEAD every needed blob -> upload the missing ones -> manifests bottom-up -> tag -> cleanup."""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field

import aiohttp
import asyncssh

from ctrd import ContainerdError
from oci.manifest import Platform

from . import remote, ssh
from .classic import load_image
from .errors import PusshError
from .plan import Plan, make_plan
from .progress import UI, human_bytes
from .source import ImageSource, repository_path
from .target import Target
from .transfer import send_registry_image
from .upload import ConnectionLost, Registry

REGISTRY_NAMESPACE = "moby"  # Docker's containerd image store


@dataclass
class PushOptions:
    registry_image: str
    platforms: list[Platform] = field(default_factory=list)  # empty: the server's platform
    jobs: int = 4
    remote_docker: str | None = None
    remote_containerd_socket: str | None = None
    timeout: float = 30.0
    ssh: ssh.SSHOptions = field(default_factory=ssh.SSHOptions)


@dataclass
class HostResult:
    host: str
    image: str
    ok: bool = False
    error: str | None = None
    blobs_sent: int = 0
    blobs_skipped: int = 0
    bytes_sent: int = 0
    bytes_skipped: int = 0
    seconds: float = 0.0
    platforms: list[str] = field(default_factory=list)
    digest: str | None = None
    sent: list[str] = field(default_factory=list)  # digests of the blobs sent
    exit_code: int = 0

    def summary(self) -> str:
        if not self.ok:
            return f"{self.host}: FAILED: {self.error}"
        rate = self.bytes_sent / self.seconds if self.seconds > 0 else 0
        return (f"{self.host}: pushed {self.image} ({', '.join(self.platforms) or '?'}): "
                f"{self.blobs_sent} blobs sent ({human_bytes(self.bytes_sent)}), "
                f"{self.blobs_skipped} skipped ({human_bytes(self.bytes_skipped)}), "
                f"{self.seconds:.1f}s, {human_bytes(rate)}/s")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


async def push_to_host(source: ImageSource, target: Target, opts: PushOptions, ui: UI,
                       connecting: asyncio.Future[ssh.Connection] | None = None) -> HostResult:
    """`connecting`: the SSH connection, when it was started while the local image was being read."""
    result = HostResult(host=str(target), image=source.ref.familiar)
    t0 = time.monotonic()
    try:
        await _connect_and_push(source, target, opts, ui, result, connecting)
        result.ok = True
    except PusshError as err:
        result.error, result.exit_code = str(err), err.exit_code
    except (aiohttp.ClientError, asyncssh.Error, OSError, asyncio.TimeoutError) as err:
        # The connection dropped mid-push; blobs already committed are skipped by the next run.
        result.error = f"{target}: connection lost during the push ({str(err) or type(err).__name__}); run it again to resume"
        result.exit_code = 1
    except ContainerdError as err:
        result.error, result.exit_code = f"{target}: reading the local image failed: {err}", 1
    except Exception as err:  # a bug: report it for this host and let the other hosts finish
        result.error, result.exit_code = f"{target}: unexpected error: {type(err).__name__}: {err}", 1
    result.seconds = time.monotonic() - t0
    return result


def connect(target: Target, opts: PushOptions) -> asyncio.Future[ssh.Connection]:
    return asyncio.ensure_future(asyncio.wait_for(ssh.connect(target, opts.ssh), opts.ssh.connect_timeout + 5))


async def _connect_and_push(source: ImageSource, target: Target, opts: PushOptions, ui: UI, result: HostResult,
                            connecting: asyncio.Future[ssh.Connection] | None) -> None:
    label = str(target)
    conn = await (connecting or connect(target, opts))
    try:
        # 3. Server checks: docker (sudo -n if needed), containerd socket, image store, platform, and
        #    what the tag points at now. (Not with --platform: a server that pulled one platform of an
        #    index has the same tag target without the other platforms' content.)
        server, current = await remote.probe(conn, opts.remote_docker, opts.remote_containerd_socket,
                                             None if opts.platforms else source.ref.name)
        ui.debug(f"{label}: docker {server.docker_version} ({' '.join(server.docker)}), containerd at "
                 f"{server.containerd_socket}, {'containerd' if server.containerd_store else 'classic'} image store, "
                 f"{server.platform}")
        token = secrets.token_urlsafe(32)
        starting: asyncio.Future | None = None
        try:
            # 4. Containerd store: the registry container (loopback, free port, per-push token),
            #    started while the local side works out what to send; not when the tag is already
            #    this image (a repeated push).
            known = source.root.digest if source.root is not None else None  # None: made by resolve()
            if server.containerd_store and (current is None or current != known):
                starting = asyncio.ensure_future(_start_registry(conn, server, opts, token, ui))
            root = await source.resolve(zstd=server.supports_zstd)
            ui.debug(f"{label}: local image {source.ref.familiar} {root.digest} from {source.description}"
                     + (f" ({source.compressed_layers} layers compressed)" if hasattr(source, "compressed_layers") else ""))
            plan = await make_plan(source, opts.platforms or [server.platform], explicit=bool(opts.platforms), root=root)
            result.platforms = [str(p) for p in plan.platforms]
            result.digest = plan.root.digest
            if server.containerd_store and current == plan.root.digest:
                result.blobs_skipped = len(plan.blobs)
                result.bytes_skipped = sum(b.size for b in plan.blobs)
                ui.debug(f"{label}: the server's {source.ref.familiar} is already {plan.root.digest}")
                if starting is not None:
                    await _shielded(_remove_once_started(conn, server, starting))
                return
            if starting is None:
                # 8. Classic store: straight into Docker with `docker load`, only the layers it lacks (classic.py).
                await load_image(conn, server, source, plan, source.ref.familiar, ui, result)
                return
            container = await asyncio.shield(starting)
        except BaseException:
            if starting is not None:  # let a registry that is still starting come up, then remove it
                await _shielded(_remove_once_started(conn, server, starting))
            raise
        try:
            # 5. HTTP to the registry over SSH channels of this one connection.
            async with conn.tunnel(container.port) as sock:
                await _push_over_tunnel(conn, server, source, plan, sock, container.port, token, opts, ui, result)
        finally:
            # 9. Whatever happened (Ctrl-C included), the registry container goes.
            await _shielded(remote.stop_registry(conn, server, container))
    finally:
        await _shielded(conn.close())


async def _start_registry(conn: ssh.Connection, server: remote.Server, opts: PushOptions, token: str,
                          ui: UI) -> remote.RegistryContainer:
    leftovers = asyncio.ensure_future(remote.remove_leftovers(conn, server))  # housekeeping, alongside
    try:
        try:
            return await remote.start_registry(conn, server, opts.registry_image, token, REGISTRY_NAMESPACE,
                                               timeout=opts.timeout)
        except remote.RegistryImageMissing:
            await send_registry_image(conn, server, opts.registry_image, ui)
            return await remote.start_registry(conn, server, opts.registry_image, token, REGISTRY_NAMESPACE,
                                               timeout=opts.timeout)
    finally:
        await _shielded(leftovers)


async def _remove_once_started(conn: ssh.Connection, server: remote.Server, starting: asyncio.Future) -> None:
    try:
        container = await starting
    except BaseException:
        return  # it never started (start_registry removes a container that failed to come up)
    await remote.stop_registry(conn, server, container)


async def _push_over_tunnel(conn: ssh.Connection, server: remote.Server, source: ImageSource, plan: Plan, sock: str,
                            port: int, token: str, opts: PushOptions, ui: UI, result: HostResult) -> None:
    label = conn.label
    connector = aiohttp.UnixConnector(path=sock, limit=max(opts.jobs * 2, 8))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=opts.timeout, sock_read=max(opts.timeout, 120))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        reg = Registry(session, f"http://127.0.0.1:{port}", repository_path(source.ref), token, label,
                       alive=conn.is_open)
        # 6. Diff: HEAD every blob the chosen platforms need, concurrently (a wrong token fails
        #    here with 401); the server's free space is asked alongside.
        free = asyncio.ensure_future(remote.free_bytes(conn, server))
        try:
            present = await asyncio.gather(*(reg.has_blob(b.digest) for b in plan.blobs))
        except BaseException:
            free.cancel()
            raise
        missing = [b for b, here in zip(plan.blobs, present) if not here]
        for b, here in zip(plan.blobs, present):
            if here:
                result.blobs_skipped += 1
                result.bytes_skipped += b.size
        needed = sum(b.size for b in missing)
        ui.debug(f"{label}: {len(missing)} of {len(plan.blobs)} blobs to send ({human_bytes(needed)})")
        await remote.check_space(conn, server, needed, free)

        # 7. Upload the missing blobs, several in flight; each verified by digest on arrival.
        sem = asyncio.Semaphore(max(opts.jobs, 1))

        async def send(b) -> None:
            async with sem:
                bar = ui.bar(f"{label} {b.digest[7:19]}", b.size)
                try:
                    await reg.upload_blob(b.digest, b.size, source.opener(b.digest), bar.advance)
                except BaseException:
                    bar.discard()
                    raise
                bar.finish()
                result.blobs_sent += 1
                result.bytes_sent += b.size
                result.sent.append(b.digest)

        try:
            await _all_or_nothing([send(b) for b in sorted(missing, key=lambda b: -b.size)])
        except ConnectionLost:
            raise
        except PusshError as err:
            raise await remote.explain_failure(conn, server, err) from err
        # Manifests bottom-up by digest; the tag last, so an interrupted push never leaves it half-made.
        for desc, body in plan.manifests[:-1]:
            await reg.put_manifest(desc.digest, desc.media_type, body)
        root, body = plan.manifests[-1]
        await reg.put_manifest(source.ref.tag or root.digest, root.media_type, body)


async def _all_or_nothing(coros: list) -> None:
    """Run concurrently; on the first failure cancel the rest and raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _shielded(coro) -> None:
    """Run cleanup to its end even when the push is being cancelled (Ctrl-C, SIGTERM)."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise
    except Exception:
        pass
