"""The server side of a push: find docker and the containerd socket, learn the image store and
platform, and run the pussh registry as a short-lived container bound to the server's loopback."""
from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
from dataclasses import dataclass

from oci.manifest import Platform, normalize_arch

from . import dockerinfo
from .dockerinfo import uses_containerd_store
from .errors import PusshError
from .ssh import Connection, Result
from .sshlib import asyncssh

REGISTRY_LABEL = "pussh.registry"
CREATED_LABEL = "pussh.registry.created"
LEFTOVER_AGE = 2 * 3600  # a registry container older than this belongs to a crashed run
CONTAINER_SOCKET = "/run/containerd/containerd.sock"
CONTENT_INGEST = "/var/lib/containerd/io.containerd.content.v1.content/ingest"
REGISTRY_PYTHON = "/opt/pussh/bin/python"  # in the registry image (Dockerfile): runs a relay in its container
READY_RE = re.compile(r"pussh-registry listening on http://([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)")

# Tried in order when --remote-containerd-socket is not given.
CONTAINERD_SOCKETS = (
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/docker/containerd/containerd.sock",  # dockerd's own managed containerd
    "/var/run/docker/containerd/containerd.sock",
    "/run/snap.docker/containerd/containerd.sock",
)
DOCKER_PATHS = ("docker", "/usr/bin/docker", "/usr/local/bin/docker", "/snap/bin/docker", "/opt/bin/docker")

# One round trip: the docker command (given, or the first found), each containerd socket that exists
# with its group, whether the CLI is pointed elsewhere than the default socket, and (cli=1) `docker
# info` and what the image's name points at now.
_PROBE = """
cli=$1; docker=$2; paths=$3; name=$4; shift 4
if [ -z "$docker" ]; then
  for d in $paths; do if command -v "$d" >/dev/null 2>&1; then docker=$(command -v "$d"); break; fi; done
fi
echo "docker=$docker"
echo "arch=$(uname -m)"
echo "python=$(command -v python3)"
for s in "$@"; do if [ -S "$s" ]; then
  echo "socket=$s"; echo "socketgid=$(stat -c %g "$s" 2>/dev/null)"
  if [ -w "$s" ]; then echo "socketw=$s"; elif sudo -n true 2>/dev/null; then echo "sudook=1"; fi
fi; done
# The CLI talks to another daemon than the default socket's: its answers are the ones that count.
if [ -n "$DOCKER_HOST$DOCKER_CONTEXT" ] || grep -qs '"currentContext"' "$HOME/.docker/config.json"; then
  echo "dockerenv=1"
fi
[ -n "$docker" ] && [ "$cli" = 1 ] || exit 0
[ -n "$name" ] && echo "current=$(eval "$docker" image inspect --format "'{{.Id}}'" '"$name"' 2>/dev/null)" &
out=$(eval "$docker" info --format "'{{json .}}'" 2>&1); echo "inforc=$?"
printf '%s\n' "$out" | while IFS= read -r l; do printf 'info=%s\n' "$l"; done
wait
exit 0
"""


class DockerSilent(PusshError):
    """Docker is installed on the server but its daemon does not answer (stopped or restarting)."""


@dataclass(frozen=True)
class Server:
    docker: tuple[str, ...]  # argv prefix, e.g. ("docker",) or ("sudo", "-n", "/usr/bin/docker"); () if none works
    containerd_socket: str | None
    containerd_store: bool  # Docker keeps images in containerd (driver-type io.containerd.snapshotter.v1)
    platform: Platform
    docker_version: str = ""
    docker_root: str = "/var/lib/docker"
    socket_gid: int | None = None  # the containerd socket's group: the registry runs as a user of it
    docker_problem: str = ""  # why there is no usable docker: the error of a path that needs it
    docker_silent: bool = False  # a docker is installed but its daemon gave no answer (DockerSilent)
    socket_problem: str = ""  # why there is no containerd socket
    socket_writable: bool = False  # this user may open it (so sshd could, if it forwards)
    sudo_ok: bool = False  # passwordless sudo works (a relay to the socket can run as root)
    python: str = ""  # python3 on the server, for a relay when sshd forwards nothing

    def require_docker(self) -> None:
        if not self.docker:
            raise PusshError(self.docker_problem)

    def require_socket(self) -> str:
        if not self.containerd_socket:
            raise PusshError(self.socket_problem)
        return self.containerd_socket

    @property
    def sudo(self) -> tuple[str, ...]:
        return ("sudo", "-n") if self.docker[:1] == ("sudo",) else ()

    @property
    def storage_paths(self) -> tuple[str, ...]:
        """Where pushed bytes land first: containerd's ingest directory, or Docker's root (docker load)."""
        if self.containerd_store or not self.docker:
            return (CONTENT_INGEST, "/var/lib/containerd", self.docker_root)
        return (self.docker_root,)

    @property
    def supports_zstd(self) -> bool:
        if not self.docker:
            return True  # containerd >= 1.5 unpacks zstd layers
        try:
            return int(self.docker_version.split(".", 1)[0]) >= 23
        except ValueError:
            return False


async def probe(conn: Connection, docker_cmd: str | None = None, socket: str | None = None,
                image: str | None = None) -> tuple[Server, str | None]:
    """Server checks in one round trip: docker (with `sudo -n` when needed), the containerd socket,
    store and platform; and the ID of what `image` names on the server now (None: nothing). A
    missing docker or socket is not an error here: only the paths that need them fail."""
    label = conn.label
    candidates = [socket] if socket else list(CONTAINERD_SOCKETS)
    given = tuple(shlex.split(docker_cmd)) if docker_cmd else ()

    def script(cli: bool) -> list[str]:
        return ["sh", "-c", _PROBE, "sh", "1" if cli else "0", shlex.join(given), " ".join(DOCKER_PATHS),
                image or "", *candidates]
    # Docker's own socket is asked alongside the shell's facts, unless a docker command is given.
    api = None if given else asyncio.ensure_future(_docker_api(conn, image))
    try:
        res = await conn.run(script(cli=bool(given)))
        answer = await api if api is not None else None
    finally:
        if api is not None:
            api.cancel()
    lines = res.stdout.splitlines()
    found = dict(l.split("=", 1) for l in lines if "=" in l and not l.startswith("info="))
    info: dict | None = None
    current: str | None = None
    if answer is not None and found.get("docker") and "dockerenv" not in found:
        info, current = answer
    elif api is not None and found.get("docker"):  # the CLI's answer, as this user or through `sudo -n`
        res = await conn.run(script(cli=True))
        lines = res.stdout.splitlines()
        found = dict(l.split("=", 1) for l in lines if "=" in l and not l.startswith("info="))
    sockets = [l.split("=", 1)[1] for l in lines if l.startswith("socket=")]
    gids = [l.split("=", 1)[1].strip() for l in lines if l.startswith("socketgid=")]
    if socket and not sockets:
        socket_problem = f"{label}: no containerd socket at {socket} on the server"
    elif not sockets:
        socket_problem = (f"{label}: no containerd socket found on the server (looked in "
                          f"{', '.join(CONTAINERD_SOCKETS)}); pass --remote-containerd-socket PATH")
    else:
        socket_problem = ""
    facts = dict(containerd_socket=sockets[0] if sockets else None, socket_problem=socket_problem,
                 socket_writable=bool(sockets) and f"socketw={sockets[0]}" in lines,
                 sudo_ok="sudook=1" in lines, python=found.get("python", "").strip(),
                 socket_gid=int(gids[0]) if gids and gids[0].isdigit() else None)
    uname_platform = Platform("linux", normalize_arch(found.get("arch", "").strip().lower()))
    if given:
        docker = given
    elif found.get("docker"):
        docker = (found["docker"],)
    else:
        return Server((), containerd_store=False, platform=uname_platform, **facts,
                      docker_problem=f"{label}: docker not found on the server (looked for {', '.join(DOCKER_PATHS)}); "
                                     "install Docker or pass --remote-docker PATH"), None
    searched = docker
    if info is None:
        out = "\n".join(l[5:] for l in lines if l.startswith("info="))
        rc = int(found.get("inforc") or 1)
        try:
            info, docker = await _docker_info(conn, docker, explicit=bool(given),
                                              res=Result([*docker, "info"], rc, out, "" if rc == 0 else out))
        except PusshError as err:
            return Server((), containerd_store=False, platform=uname_platform, **facts, docker_problem=str(err),
                          docker_silent=isinstance(err, DockerSilent)), None
        current = found.get("current", "").strip() or None
    store = uses_containerd_store(info)
    plat = Platform(str(info.get("OSType") or "linux"), normalize_arch(str(info.get("Architecture") or "").lower()))
    server = Server(docker, containerd_store=store, platform=plat, docker_version=str(info.get("ServerVersion") or ""),
                    docker_root=str(info.get("DockerRootDir") or "/var/lib/docker"), **facts)
    if image and docker != searched:  # it took sudo: ask again
        current = await image_id(conn, server, image)
    return server, current


async def _docker_api(conn: Connection, image: str | None) -> tuple[dict, str | None] | None:
    """Docker's info and the ID `image` names, from the daemon's socket through SSH forwards: ~10 ms,
    where the `docker` CLI takes 50-150 ms (`docker info` also starts every CLI plugin to describe
    it). None when that socket does not answer this user (no forwarding, no permission, no Docker)."""
    async def get(path: str) -> tuple[int, object] | None:
        try:
            reader, writer = await conn.conn.open_unix_connection(dockerinfo.SOCKET)
        except (asyncssh.Error, OSError):
            return None
        return await dockerinfo.get(reader, writer, path)
    async with asyncio.TaskGroup() as tg:
        asking = tg.create_task(get("/info"))
        naming = tg.create_task(get(dockerinfo.image_path(image))) if image else None
    info = asking.result()
    if info is None or info[0] != 200 or not isinstance(info[1], dict) or not info[1].get("ServerVersion"):
        return None
    named = naming.result() if naming is not None else None
    if named is not None and named[0] == 200 and isinstance(named[1], dict):
        return info[1], str(named[1].get("Id") or "") or None
    if named is not None and named[0] != 404:
        return None  # unsure what the name points at: the CLI answers
    return info[1], None


async def _docker_info(conn: Connection, docker: tuple[str, ...], explicit: bool,
                       res: Result) -> tuple[dict, tuple[str, ...]]:
    """`res`: the probe's `docker info`; with permission denied, try again through `sudo -n`."""
    label = conn.label
    info = _parse_info(res.stdout)
    problem = _info_problem(res, info)
    if problem and "permission denied" in problem.lower() and not explicit and docker[0] != "sudo":
        sudo = ("sudo", "-n", *docker)
        res2 = await conn.run([*sudo, "info", "--format", "{{json .}}"])
        info2 = _parse_info(res2.stdout)
        if not _info_problem(res2, info2):
            return info2, sudo
        raise PusshError(f"{label}: permission denied on the Docker socket and no passwordless sudo "
                         f"({res2.error_line()}); add the user to the docker group or allow `sudo -n docker`")
    if problem:
        if "command not found" in problem or res.exit_status == 127:
            raise PusshError(f"{label}: docker not found on the server ({shlex.join(docker)}): {problem}")
        if "password is required" in problem or "a terminal is required" in problem:
            raise PusshError(f"{label}: {shlex.join(docker)} needs a password; allow passwordless sudo for docker")
        raise DockerSilent(f"{label}: docker on the server does not answer: {problem}")
    return info, docker


def _parse_info(stdout: str) -> dict:
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return {}


def _info_problem(res, info: dict) -> str:
    errs = info.get("ServerErrors") or []
    if errs:
        return str(errs[0])
    if not res.ok or not info.get("ServerVersion"):
        return res.error_line()
    return ""


async def free_bytes(conn: Connection, server: Server) -> int | None:
    """Free space where the pushed bytes go first (the first of storage_paths that exists); None
    when it cannot be told (no df, no permission)."""
    script = 'for p in "$@"; do if [ -e "$p" ]; then exec df -P -k "$p"; fi; done; exit 1'
    res = await conn.run([*server.sudo, "sh", "-c", script, "sh", *server.storage_paths])
    lines = res.stdout.strip().splitlines()
    if not res.ok or len(lines) < 2:
        return None
    fields = lines[-1].split()
    try:
        return int(fields[3]) * 1024
    except (IndexError, ValueError):
        return None


async def check_space(conn: Connection, server: Server, needed: int,
                      free: asyncio.Future[int | None] | None = None) -> None:
    """Refuse to start a push that cannot fit, rather than fail half-way through. `free`: the
    answer of free_bytes, when it was asked earlier."""
    free_now = await (free or free_bytes(conn, server))
    if free_now is not None and free_now < needed:
        raise PusshError(f"{conn.label}: the server's disk is full: {needed >> 20} MiB to send, "
                         f"{free_now >> 20} MiB free in {server.storage_paths[0]}")


async def explain_failure(conn: Connection, server: Server, err: PusshError) -> PusshError:
    """After a failed upload or load: a full disk is the likely cause when almost no space is left
    (containerd reports ENOSPC by resetting its stream, so the registry may only see a bad digest)."""
    if "disk is full" in str(err):
        return err
    try:
        free = await free_bytes(conn, server)
    except PusshError:
        return err
    if free is not None and free < 4 << 20:
        return PusshError(f"{conn.label}: the server's disk is full ({free >> 10} KiB free in "
                          f"{server.storage_paths[0]}); the push failed with: {str(err).split(': ', 1)[-1]}")
    return err


# -- the registry container --------------------------------------------------------------------

@dataclass
class RegistryContainer:
    id: str
    port: int
    # The exec channel that started the container and now waits on its stdin: closing it (or the SSH
    # connection dying, even with pussh killed) makes it remove the container.
    keeper: asyncssh.SSHClientProcess | None = None


# Start the registry and keep it only as long as this SSH session lives: the token comes as the
# first stdin line (never in an argv), the container ID goes to stdout, then the container's log up
# to its "listening" line (or a last line if it exits first); then the script waits for stdin to
# close and removes the container. One exec channel, so one round trip, for all of it.
_KEEPER = """
IFS= read -r token || exit 3
docker=$1; shift
cid=$(printf 'PUSSH_REGISTRY_TOKEN=%s\\n' "$token" | "$@") || exit 4
echo "cid=$cid"
( eval "$docker" logs -f "$cid" 2>&1 | while IFS= read -r line; do
    printf '%s\\n' "$line"
    case $line in *"pussh-registry listening on"*) exit 7;; esac
  done
  [ $? = 7 ] || echo "pussh: the registry container exited" ) &
cat >/dev/null
eval "$docker" rm -f "$cid" >/dev/null
"""


class RegistryImageMissing(PusshError):
    """The server has no registry image: send it, then start again."""


async def remove_leftovers(conn: Connection, server: Server) -> None:
    """Remove registry containers of crashed runs: exited ones, and any older than LEFTOVER_AGE. Not
    a "created" one: that is a concurrent push between `docker run`'s create and start (removing it
    failed that push: "No such container"); a crash there leaves it to the age rule."""
    res = await conn.run([*server.docker, "ps", "-a", "--filter", f"label={REGISTRY_LABEL}=1", "--format",
                          "{{.ID}} {{.State}} {{.Label \"" + CREATED_LABEL + "\"}}"])
    now = time.time()
    stale = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        created = float(parts[2]) if len(parts) > 2 and parts[2].replace(".", "", 1).isdigit() else 0.0
        if parts[1] in ("exited", "dead") or now - created > LEFTOVER_AGE:
            stale.append(parts[0])
    if stale:
        await conn.run([*server.docker, "rm", "-f", *stale])


async def image_id(conn: Connection, server: Server, image: str) -> str | None:
    """Docker's ID of the image, or None. With the containerd store it is the digest of the
    image's target (index or manifest)."""
    res = await conn.run([*server.docker, "image", "inspect", "--format", "{{.Id}}", image])
    return res.stdout.strip() if res.ok else None


async def start_registry(conn: Connection, server: Server, image: str, token: str, namespace: str,
                         timeout: float = 30.0) -> RegistryContainer:
    """Run the registry on the server's 127.0.0.1 (free port), the containerd socket mounted, the
    token through --env-file /dev/stdin; wait for its "listening" line and return the port."""
    argv = [*server.docker, "run", "-d", "--pull", "never", "--network", "host",
            "--label", f"{REGISTRY_LABEL}=1", "--label", f"{CREATED_LABEL}={int(time.time())}",
            "--env-file", "/dev/stdin", "-v", f"{server.containerd_socket}:{CONTAINER_SOCKET}",
            # the image's unprivileged user, in the socket's group (or root when the group is unknown)
            *(["--group-add", str(server.socket_gid)] if server.socket_gid is not None else ["--user", "0:0"]),
            image, "--listen", "127.0.0.1:0", "--namespace", namespace]
    cmd = shlex.join(["sh", "-c", _KEEPER, "sh", shlex.join(server.docker), *argv])
    keeper = await conn.conn.create_process(cmd)
    container = RegistryContainer("", 0, keeper)
    seen: list[str] = []
    try:
        async def ready() -> int:
            async for line in keeper.stdout:
                line = line.rstrip()
                if line.startswith("cid=") and not container.id:
                    container.id = line[4:].strip()
                    continue
                seen.append(line)
                m = READY_RE.search(line)
                if m:
                    return int(m.group(2))
            return 0
        keeper.stdin.write(token + "\n")
        container.port = await asyncio.wait_for(ready(), timeout)
    except asyncio.TimeoutError:
        await stop_registry(conn, server, container)
        raise PusshError(f"{conn.label}: the registry did not start within {timeout:.0f}s: "
                         f"{' | '.join(seen[-3:]) or 'no output'}") from None
    except BaseException:
        await stop_registry(conn, server, container)
        raise
    if container.port:
        return container
    if not container.id:  # `docker run` itself failed
        err = [l for l in (await keeper.stderr.read()).strip().splitlines() if "docker run --help" not in l]
        keeper.close()
        msg = " ".join(err) or "no output"
        if "No such image" in msg or ("not found" in msg.lower() and image in msg):
            raise RegistryImageMissing(f"{conn.label}: the registry image {image} is not on the server")
        raise PusshError(f"{conn.label}: cannot start the registry container: {msg}")
    await stop_registry(conn, server, container)
    raise PusshError(f"{conn.label}: the registry container exited: {' | '.join(seen[-3:]) or 'no output'}")


async def stop_registry(conn: Connection, server: Server, container: RegistryContainer) -> None:
    """Close the keeper's stdin: it removes the container and exits. Should that not happen in time,
    remove it directly."""
    if container.keeper is not None:
        try:
            container.keeper.stdin.write_eof()
            await asyncio.wait_for(container.keeper.wait_closed(), 30)
            if container.keeper.exit_status == 0:
                return
        except (asyncio.TimeoutError, OSError, asyncssh.Error):
            pass
        finally:
            container.keeper.close()
    if container.id:
        await conn.run([*server.docker, "rm", "-f", container.id], timeout=30)
