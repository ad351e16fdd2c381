"""`pussh pull HOST IMAGE`: the copy engine the other way round. The source is the server's
containerd, read over its socket forwarded through the SSH connection; the destination is the local
containerd (a ContainerdDestination on the local socket): only the blobs the local store lacks
cross, under a lease, manifests bottom-up, the tag last, with the same progress, JSON and errors
as a push."""
from __future__ import annotations

import asyncio
import contextlib
import platform as _platform
import time
from collections.abc import AsyncIterator

import ctrd
import ctrd.snapshots
from oci import reference as R
from oci.manifest import Desc, Platform, normalize_arch

from . import remote, ssh
from .copy import account_dry_run, copy_image
from .dest_containerd import CRI_NAMESPACE, DOCKER_NAMESPACE, LEASE_EXPIRY, ContainerdDestination
from .dockerinfo import uses_containerd_store
from .errors import PusshError, UsageError
from .plan import make_plan
from .progress import UI
from .options import HostResult, PushOptions
from .push import _shielded
from .source import AsStored
from .sshlib import asyncssh
from .target import Target



class RemoteSource(AsStored):
    """An ImageSource on the server's containerd (through the forwarded socket)."""

    def __init__(self, ctr: ctrd.Containerd, ref: R.Reference, root: Desc, label: str) -> None:
        self.ctr, self.ref, self.root, self.label = ctr, ref, root, label
        self.description = f"{label}'s containerd (namespace {ctr.namespace})"

    def _mapped(self, err: ctrd.ContainerdError) -> PusshError:
        return PusshError(f"{self.label}: reading the server's image failed: {err}")

    async def resolve(self, zstd: bool) -> Desc:
        return self.root

    async def read_small(self, digest: str) -> bytes:
        try:
            return await self.ctr.content.read_all(digest)
        except ctrd.ContainerdError as err:
            raise self._mapped(err) from err

    async def has(self, digest: str) -> bool:
        try:
            return await self.ctr.content.exists(digest) is not None
        except ctrd.ContainerdError as err:
            raise self._mapped(err) from err

    def opener(self, digest: str):
        async def source(offset: int) -> AsyncIterator[bytes]:
            try:
                async for chunk in self.ctr.content.read(digest, offset=offset):
                    yield chunk
            except ctrd.ContainerdError as err:
                raise self._mapped(err) from err
        return source

    async def close(self) -> None:
        self.ctr.close()


class _LocalSide:
    """What ContainerdDestination asks of its connection, for the local socket."""

    label = "local containerd"

    def is_open(self) -> bool:
        return True


def local_platform() -> Platform:
    return Platform("linux", normalize_arch(_platform.machine().lower()))


async def pull_from_host(target: Target, ref: R.Reference, opts: PushOptions, ui: UI, *, socket: str, namespace: str,
                         docker_host: str | None) -> HostResult:
    result = HostResult(host=str(target), image=ref.familiar, dry_run=opts.dry_run, via="containerd")
    t0 = time.monotonic()
    try:
        await _pull(target, ref, opts, ui, result, socket, namespace, docker_host)
        result.ok = True
    except PusshError as err:
        result.error, result.exit_code = str(err), err.exit_code
    except ctrd.ContainerdError as err:
        result.error, result.exit_code = f"the local containerd at {socket} failed: {err}", 1
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as err:
        result.error = f"{target}: connection lost during the pull ({str(err) or type(err).__name__}); run it again to resume"
        result.exit_code = 1
    result.seconds = time.monotonic() - t0
    return result


async def _local_store_ok(docker_host: str | None, namespace: str) -> None:
    """A local Docker that keeps the classic store would not see an image pulled into containerd."""
    from .dockerapi import DockerAPI, DockerError
    docker = DockerAPI(docker_host)
    try:
        info = await docker.info()
    except DockerError:
        return  # no Docker here: containerd alone
    finally:
        await docker.close()
    if namespace == DOCKER_NAMESPACE and not uses_containerd_store(info):
        raise PusshError("the local Docker keeps the classic image store, which does not read containerd's: pull "
                         "writes into containerd (choose a namespace with --containerd-namespace)")


async def _pull(target: Target, ref: R.Reference, opts: PushOptions, ui: UI, result: HostResult, socket: str,
                namespace: str, docker_host: str | None) -> None:
    label = str(target)
    async with contextlib.AsyncExitStack() as stack:
        connecting = ssh.start_connect(target, opts.ssh)
        stack.push_async_callback(lambda: _shielded(_close(connecting)))
        local = ctrd.Containerd(socket, namespace)
        stack.callback(local.close)
        try:
            await local.version()
        except ctrd.ContainerdError as err:
            raise PusshError(f"cannot use the local containerd at {socket}: {err}") from err
        await _local_store_ok(docker_host, namespace)
        conn = await connecting
        server, _ = await remote.probe(conn, opts.remote_docker, opts.remote_containerd_socket, None)
        remote_socket = server.require_socket()
        try:
            await conn.check_unix(remote_socket)
        except (ssh.ForwardRefused, ssh.SocketRefused) as err:
            raise PusshError(f"{err}: pull reads the server's containerd directly; log in as root or as a member of "
                             "the socket's group with stream-local forwarding allowed") from None
        from .grpc_ssh import SSHChannel  # gRPC straight on direct-streamlocal channels of the connection
        rctr = ctrd.Containerd(remote_socket, opts.namespace or DOCKER_NAMESPACE,
                               channel=SSHChannel(conn.conn, remote_socket))
        stack.callback(rctr.close)
        try:
            if opts.namespace is None and not server.docker:
                rctr.namespace = CRI_NAMESPACE if await rctr.cri_loaded() else "default"
            img = await rctr.images.get(ref.name)
        except ctrd.NotFound:
            raise PusshError(f"{label}: no image {ref.familiar} on the server (containerd namespace "
                             f"{rctr.namespace})") from None
        except ctrd.ContainerdError as err:
            raise PusshError(f"{label}: the server's containerd failed: {err}") from err
        t = img.target
        source = RemoteSource(rctr, ref, Desc(t.media_type, t.digest, t.size, annotations=dict(t.annotations)), label)
        plan = await make_plan(source, opts.platforms or [local_platform()], explicit=bool(opts.platforms))
        result.platforms = [str(p) for p in plan.platforms]
        result.digest = plan.root.digest
        result.namespace = namespace
        dest = ContainerdDestination(local, _LocalSide(), ref, opts.snapshotter or ctrd.snapshots.DEFAULT_SNAPSHOTTER,
                                 side="the local")
        for _ in range(opts.jobs):
            dest.add_writer(local)  # a local socket: one client carries every stream
        if await dest.current(ref.name) == plan.root.digest:
            result.blobs_skipped = len(plan.blobs)
            result.bytes_skipped = sum(b.size for b in plan.blobs)
            return
        if opts.dry_run:
            account_dry_run(plan, await dest.lacking(plan.blobs), ui=ui, result=result, label=label, via="containerd")
            return
        dest.lease = await local.leases.create(expire=LEASE_EXPIRY, labels={"pussh.pull": ref.name})
        await dest.prepare(plan, source)
        await copy_image(source, dest, plan, jobs=opts.jobs, ui=ui, result=result, label=label)
        result.unpacked = list(dest.unpacked)


async def _close(connecting: asyncio.Future[ssh.Connection]) -> None:
    if not connecting.done():
        connecting.cancel()
    with contextlib.suppress(BaseException):
        await (await connecting).close()


def check_via(via: str) -> None:
    if via not in ("auto", "containerd"):
        raise UsageError(f"--via {via}: pull reads the server's containerd directly (--via containerd)")
