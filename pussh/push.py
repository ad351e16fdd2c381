"""One push, top to bottom: connect -> probe the server -> choose the path -> local image and plan ->
copy_image into the chosen destination -> close what was opened (AsyncExitStack, Ctrl-C included).

Paths (--via): `containerd`, straight into the server's containerd over a forwarded socket (no
container, nothing to install on the server); `registry`, the pussh registry as a short-lived
container (a docker-group user who may not open the socket); `load`, `docker load` of only the
missing layers (a Docker that keeps the classic image store)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field

import ctrd

from . import relay, remote, ssh
from .classic import load_image
from .copy import account_dry_run, copy_image
from .dest_containerd import ContainerdDestination
from .errors import ConnectionLost, LocalReadError, PusshError, Transient, UsageError
from .options import HostResult, PushOptions
from .plan import Plan, make_plan
from .progress import UI
from .source import ImageSource
from .sshlib import asyncssh
from .target import Target

REGISTRY_NAMESPACE = ctrd.DEFAULT_NAMESPACE  # Docker's containerd image store, where the registry path writes


@dataclass
class HostSession:
    """What the images pushed to one host share: the SSH connection and the registry container
    (started by the first image that needs it, with its token); closed after the last image."""
    conn: ssh.Connection | None = None
    registry: asyncio.Future | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def close(self) -> None:
        await self.stack.aclose()

    async def reset(self) -> None:
        """After a fault: close what this session opened; the next attempt opens it anew."""
        await self.close()
        self.conn, self.registry, self.stack = None, None, contextlib.AsyncExitStack()


async def push_images_to_host(sources: list[ImageSource], target: Target, opts: PushOptions, ui: UI,
                              connecting: asyncio.Future[ssh.Connection] | None = None) -> list[HostResult]:
    """Several images to one host over one connection and one server session, one after another:
    a blob they share crosses once (the later images find it on the server)."""
    host = HostSession()
    try:
        return [await push_to_host(source, target, opts, ui, connecting, host) for source in sources]
    finally:
        await host.close()


async def push_to_host(source: ImageSource, target: Target, opts: PushOptions, ui: UI,
                       connecting: asyncio.Future[ssh.Connection] | None = None,
                       host: HostSession | None = None) -> HostResult:
    """`connecting`: the SSH connection, when it was started while the local image was being read;
    `host`: the session earlier images to this host opened (None: this push opens and closes its own)."""
    result = HostResult(host=str(target), image=source.ref.familiar, dry_run=opts.dry_run)
    t0 = time.monotonic()
    own, host = host is None, host or HostSession()
    try:
        await _ride_out(source, target, opts, ui, result, connecting, host)
        result.ok = True
    except PusshError as err:
        result.error, result.exit_code = str(err), err.exit_code
    except ctrd.ContainerdError as err:  # the destinations map theirs: this is the local store's
        result.error, result.exit_code = f"{target}: reading the local image failed: {err}", 1
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as err:
        # The connection dropped mid-push; blobs already committed are skipped by the next run.
        result.error = f"{target}: connection lost during the push ({str(err) or type(err).__name__}); run it again to resume"
        result.exit_code = 1
    except Exception as err:  # a bug: report it for this host and let the other hosts finish
        result.error = f"{target}: unexpected error: {type(err).__name__}: {err}"
        result.exit_code = 1
    finally:
        if own:
            await host.close()
    result.seconds = time.monotonic() - t0
    return result


async def _ride_out(source: ImageSource, target: Target, opts: PushOptions, ui: UI, result: HostResult,
                    connecting: asyncio.Future[ssh.Connection] | None, host: HostSession) -> None:
    """The push, tried again after a fault that may pass (SSH dropped, a daemon or the registry
    restarting), for up to --timeout seconds from the fault: each attempt reconnects and resumes,
    the blobs already committed skipped and a blob in flight continued from the server's offset."""
    deadline: float | None = None
    attempt, progress = 0, 0
    while True:
        try:
            await _push(source, target, opts, ui, result, connecting, host)
            return
        except (Transient, asyncssh.Error, OSError, asyncio.TimeoutError) as err:
            if host.conn is None and attempt == 0:
                raise  # never connected: a wrong host or a server that is down, not a fault that passes
            now = time.monotonic()
            if deadline is None or result.bytes_sent > progress:  # the clock starts at a fault
                deadline, progress = now + opts.timeout, result.bytes_sent
            if opts.dry_run or now >= deadline:
                raise
            ui.line(f"{target}: {str(err) or type(err).__name__}; trying again ({deadline - now:.0f}s left)")
            result.retries += 1
            await host.reset()
            connecting = None
            await asyncio.sleep(min(0.5 * 2 ** attempt, 4))
            attempt += 1


async def _push(source: ImageSource, target: Target, opts: PushOptions, ui: UI, result: HostResult,
                connecting: asyncio.Future[ssh.Connection] | None, host: HostSession) -> None:
    label = str(target)
    async with contextlib.AsyncExitStack() as stack:
        if host.conn is None:  # the host's first image: its connection, closed after its last
            first = await (connecting or ssh.start_connect(target, opts.ssh))
            host.conn = first
            host.stack.push_async_callback(lambda: _shielded(first.close()))
        conn = host.conn
        # Server facts in one round trip; whether sshd forwards to the usual containerd socket is
        # asked alongside. (Not the tag's target with --platform: a server that pulled one platform
        # of an index has the same target without the other platforms' content.)
        server, current, access = await _probe(conn, opts, None if opts.platforms else source.ref.name)
        via = _choose(server, opts, access.direct_problem, label)
        result.via = via
        result.transport = access.direct_transport if via == "containerd" else \
            "stdio" if via == "registry" and access.tcp_refused else "forward" if via == "registry" else "exec"
        why = access.direct_problem if via != "containerd" else \
            "sshd forwards no unix socket: over a relay's stdio" if access.direct_relay else ""
        ui.debug(f"{label}: docker {server.docker_version or 'none'} ({' '.join(server.docker) or '-'}), containerd at "
                 f"{server.containerd_socket}, {'containerd' if server.containerd_store else 'classic'} image store, "
                 f"{server.platform}; via {via} ({result.transport})" + (f": {why}" if why else ""))
        token = host.token
        starting: asyncio.Future[remote.RegistryContainer] | None = host.registry  # an earlier image's
        known = source.root.digest if source.root is not None else None  # None: made by resolve()
        if via == "registry" and starting is None and not opts.dry_run and (current is None or current != known):
            # Started while the local side works out what to send; removed on every way out (after
            # the host's last image).
            starting = host.registry = asyncio.ensure_future(_start_registry(conn, server, opts, token, ui))
            host.stack.push_async_callback(lambda: _shielded(_remove_once_started(conn, server, starting)))
        dest = None  # the destination, once it is needed

        async def open_direct() -> ContainerdDestination:
            opened = await stack.enter_async_context(
                ContainerdDestination.open(conn, server.require_socket(), source.ref, docker=bool(server.docker),
                                           namespace=opts.namespace, snapshotter=opts.snapshotter,
                                           relay=access.direct_relay, jobs=opts.jobs,
                                           docker_silent=server.docker_problem if server.docker_silent else ""))
            result.namespace = opened.namespace  # (a dry run writes nothing: open() then drops its lease)
            return opened
        if via == "containerd" and not server.docker:  # the tag's target is asked of containerd itself
            dest = await open_direct()
        zstd = server.supports_zstd
        if source.compresses and via == "containerd" and zstd:
            # pussh compresses these layers itself: as BlockGzip, which the server's delta helper
            # remakes byte for byte (an exact delta, pussh.delta.containerd); as zstd only to keep
            # an image of this repository the server has with zstd layers (an older pussh's), whose
            # unchanged layers then keep their digests. --delta: BlockGzip anyway.
            from .delta.containerd import has_zstd_layers
            dest = dest or await open_direct()
            if current is None and not server.docker and not opts.platforms:
                current = await dest.current(source.ref.name)
            zstd = opts.delta is not True and current is not None and await has_zstd_layers(
                dest, current, (opts.platforms or [server.platform])[0])
        try:
            root = await source.resolve(zstd=zstd)
        except PusshError:
            raise
        except Exception as err:
            raise LocalReadError(f"reading the local image failed: {err}") from err
        ui.debug(f"{label}: local image {source.ref.familiar} {root.digest} from {source.description}"
                 + (f" ({source.compressed_layers} layers compressed)" if hasattr(source, "compressed_layers") else ""))
        plan = await make_plan(source, opts.platforms or [server.platform], explicit=bool(opts.platforms), root=root)
        result.platforms = [str(p) for p in plan.platforms]
        result.digest = plan.root.digest
        if dest is not None and current is None and not server.docker and not opts.platforms:
            current = await dest.current(source.ref.name)
        if via != "load" and current == plan.root.digest:
            result.blobs_skipped = len(plan.blobs)
            result.bytes_skipped = sum(b.size for b in plan.blobs)
            ui.debug(f"{label}: the server's {source.ref.familiar} is already {plan.root.digest}")
            return
        if via == "containerd" and dest is None:  # opened only now: a repeated push never needs it
            dest = await open_direct()
        if opts.dry_run:
            await _dry_run(conn, server, via, dest, source, plan, opts, result, ui, label)
            return
        if via == "load":
            await load_image(conn, server, source, plan, source.ref.familiar, ui, result, delta=opts.delta)
            return
        if dest is None:
            from .dest_registry import RegistryDestination  # aiohttp: imported only on this path
            assert starting is not None
            container = await asyncio.shield(starting)
            # Where sshd forwards no TCP, the registry's port is reached from inside its container.
            port_relay = relay.command(remote.REGISTRY_PYTHON, f"127.0.0.1:{container.port}",
                                       (*server.docker, "exec", "-i", container.id)) if access.tcp_refused else None
            dest = await stack.enter_async_context(
                RegistryDestination.open(conn, container.port, token, source.ref, opts.jobs, opts.timeout, port_relay))
        elif isinstance(dest, ContainerdDestination):
            if opts.delta or (opts.delta is None and not zstd and source.compresses):
                # exact where pussh made the local blob; else opt-in: the server stores blobs of its own
                from .delta.containerd import rewrite
                plan = await rewrite(conn, server, dest, source, plan, current, opts.delta, ui, result)
                result.digest = plan.root.digest
            await dest.prepare(plan, source)
        free = asyncio.ensure_future(remote.free_bytes(conn, server))  # asked alongside the diff
        stack.callback(free.cancel)

        async def check_space(needed: int) -> None:
            await remote.check_space(conn, server, needed, free)
        try:
            await copy_image(source, dest, plan, jobs=opts.jobs, ui=ui, result=result, label=label,
                             check_space=check_space)
        except (ConnectionLost, LocalReadError):
            raise
        except PusshError as err:
            raise await remote.explain_failure(conn, server, err) from err
        finally:
            result.unpacked = list(getattr(dest, "unpacked", []))


@dataclass
class Access:
    """How the push can reach the server's containerd socket and the registry's port."""

    direct_problem: str = ""  # why the direct path cannot be taken ("": it can)
    direct_relay: list[str] | None = None  # argv of a stdio relay to the socket; None: sshd forwards it
    tcp_refused: bool = False  # sshd forwards no TCP: the registry is reached through a relay too

    @property
    def direct_transport(self) -> str:
        return "forward" if self.direct_relay is None else "stdio"


async def _dry_run(conn: ssh.Connection, server: remote.Server, via: str, dest: ContainerdDestination | None,
                   source: ImageSource, plan: Plan, opts: PushOptions, result: HostResult, ui: UI, label: str) -> None:
    """--dry-run: what the push would send, found out without changing the server. The direct path
    asks containerd's content store; the registry and load paths (no registry container started)
    ask Docker which layer chains it has, as docker load skips them."""
    from .classic import chain_ids, server_chains
    if via == "containerd":
        assert dest is not None
        lacking = await dest.lacking(plan.blobs)
    else:
        if via == "load" and len(plan.images) != 1:
            raise PusshError(f"{label}: a classic-store Docker holds one platform per tag: choose one with --platform")
        now = await conn.run([*server.docker, "image", "inspect", "--format", "{{.Id}}", source.ref.familiar])
        if via == "load" and now.ok and now.stdout.strip() == plan.images[0].config.digest:
            lacking = []
        else:
            have = await server_chains(conn, server)
            present: set[str] = set()
            for image in plan.images:
                config = json.loads(await source.read_small(image.config.digest)) if image.config else {}
                diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
                present.update(l.digest for c, l in zip(chain_ids(diff_ids), image.layers) if c in have)
            lacking = [b for b in plan.blobs if b.digest not in present]
        if via == "registry" and await remote.image_id(conn, server, opts.registry_image) is None:
            ui.line(f"{label}: would first send the registry image {opts.registry_image}")
    account_dry_run(plan, lacking, ui=ui, result=result, label=label, via=via)
    await remote.check_space(conn, server, result.bytes_sent)


async def _probe(conn: ssh.Connection, opts: PushOptions, image: str | None) -> tuple[remote.Server, str | None, Access]:
    """The server's facts, its tag's current target, and how it can be reached. Whether sshd
    forwards to the usual containerd socket, and forwards TCP, is asked alongside the probe."""
    guess = opts.remote_containerd_socket or remote.CONTAINERD_SOCKETS[0]
    ask = opts.transport == "auto"
    checking = asyncio.ensure_future(_refusal(conn, guess)) if ask and opts.via in ("auto", "containerd") else None
    tcp = asyncio.ensure_future(_refusal_tcp(conn)) if ask and opts.via in ("auto", "registry") else None
    try:
        server, current = await remote.probe(conn, opts.remote_docker, opts.remote_containerd_socket, image)
        access = Access(tcp_refused=bool(await tcp) if tcp is not None else opts.transport == "stdio")
    except BaseException:
        for t in (checking, tcp):
            if t is not None:
                t.cancel()
        raise
    if opts.via not in ("auto", "containerd"):
        access.direct_problem = "not asked for"
        return server, current, access
    refusal = await checking if checking is not None else None
    if server.containerd_socket is None:
        access.direct_problem = server.socket_problem
        return server, current, access
    socket = server.containerd_socket
    if opts.transport == "stdio":  # as if sshd forwarded nothing
        refusal = ssh.ForwardRefused(f"{conn.label}: --transport stdio") if server.socket_writable else \
            ssh.SocketRefused(f"{conn.label}: --transport stdio")
    elif socket != guess or checking is None:
        refusal = await _refusal(conn, socket)
    if isinstance(refusal, ssh.SocketRefused) and server.socket_writable:
        # OpenSSH answers a refused stream-local forward as it answers a failed connect: the
        # probe's word that this user may open the socket tells them apart.
        refusal = ssh.ForwardRefused(f"{conn.label}: sshd refuses to forward unix sockets "
                                     "(AllowStreamLocalForwarding or DisableForwarding)")
    elif isinstance(refusal, ssh.SocketRefused):
        refusal = ssh.SocketRefused(f"{conn.label}: this user may not open {socket} (its group is {server.socket_gid})")
    if refusal is not None:
        # The same bytes over a command's stdio: as this user where sshd refuses to forward, as
        # root through `sudo -n` where this user may not open the socket.
        prefix = () if isinstance(refusal, ssh.ForwardRefused) else ("sudo", "-n") if server.sudo_ok else None
        if opts.transport == "forward":
            prefix = None  # no relay: the forward or nothing
        if server.python and prefix is not None:
            access.direct_relay = relay.command(server.python, socket, prefix)
        else:
            access.direct_problem = str(refusal).split(": ", 1)[-1] + (
                "" if server.python or prefix is None else ", and the server has no python3 to relay through")
    elif server.docker and not server.containerd_store and not opts.namespace:
        access.direct_problem = "the server's Docker keeps the classic image store, which does not read containerd's"
    return server, current, access


async def _refusal(conn: ssh.Connection, socket: str) -> ssh.ForwardRefused | ssh.SocketRefused | None:
    try:
        await conn.check_unix(socket)
    except (ssh.ForwardRefused, ssh.SocketRefused) as err:
        return err
    return None


async def _refusal_tcp(conn: ssh.Connection) -> ssh.ForwardRefused | None:
    try:
        await conn.check_tcp()
    except ssh.ForwardRefused as err:
        return err
    return None


def _choose(server: remote.Server, opts: PushOptions, direct_problem: str, label: str) -> str:
    """The path: the direct one where it works, else the registry (Docker's containerd store) or
    docker load (the classic store)."""
    if opts.via == "containerd":
        if direct_problem:
            raise PusshError(f"{label}: --via containerd: {direct_problem}; log in as root or as a member of the "
                             "socket's group with stream-local forwarding allowed, or use --via registry")
        return "containerd"
    if opts.via == "auto" and not direct_problem:
        return "containerd"
    if not server.docker:
        raise PusshError(f"{server.docker_problem}; and the containerd socket cannot be used directly "
                         f"({direct_problem}): log in as root or as a member of the socket's group")
    if server.containerd_store:
        if opts.via == "load":
            raise UsageError(f"{label}: --via load is for servers whose Docker keeps the classic image store; "
                             "this one keeps images in containerd (use --via containerd or registry)")
        server.require_socket()
        return "registry"
    if opts.via == "registry":
        raise UsageError(f"{label}: --via registry needs Docker's containerd image store on the server; this one "
                         "keeps the classic store (use --via load)")
    return "load"


async def _start_registry(conn: ssh.Connection, server: remote.Server, opts: PushOptions, token: str,
                          ui: UI) -> remote.RegistryContainer:
    leftovers = asyncio.ensure_future(remote.remove_leftovers(conn, server))  # housekeeping, alongside
    try:
        try:
            return await remote.start_registry(conn, server, opts.registry_image, token, REGISTRY_NAMESPACE,
                                               timeout=opts.timeout)
        except remote.RegistryImageMissing:
            from .transfer import send_registry_image  # aiohttp (the local Engine API): only here
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
