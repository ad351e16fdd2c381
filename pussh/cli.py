"""Command line: `pussh [OPTIONS] IMAGE [USER@]HOST[:PORT] [HOST...]`, and `docker pussh` as a
Docker CLI plugin. Pushes to several hosts concurrently; the exit code is non-zero if any failed."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from typing import TYPE_CHECKING

import click

from . import __version__
from .errors import PusshError, UsageError

if TYPE_CHECKING:  # the rest is imported when a push runs: --version and --help stay fast
    from oci import reference as R

    from .progress import UI
    from .push import HostResult, PushOptions
    from .target import Target

DEFAULT_REGISTRY_IMAGE = os.environ.get("PUSSH_REGISTRY_IMAGE") or f"pussh-registry:{__version__}"
EXIT_INTERRUPTED = 130


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("image")
@click.argument("hosts", nargs=-1, required=True, metavar="[USER@]HOST[:PORT] [HOST...]")
@click.option("-i", "--ssh-key", "ssh_keys", multiple=True, metavar="FILE", help="SSH private key (repeatable).")
@click.option("-F", "--ssh-config", "ssh_configs", multiple=True, metavar="FILE", help="SSH client config file (default ~/.ssh/config).")
@click.option("--platform", "platforms", multiple=True, metavar="OS/ARCH[/VARIANT]",
              help="Platform(s) of a multi-platform image to push (default: the server's). Repeatable.")
@click.option("--no-host-key-check", is_flag=True, help="Do not verify the server's SSH host key (insecure).")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=4, show_default=True, help="Blobs uploaded in parallel.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output; only errors and the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result object per host on stdout.")
@click.option("--registry-image", default=DEFAULT_REGISTRY_IMAGE, show_default=True, help="Image of the server-side registry.")
@click.option("--remote-docker", metavar="CMD", help="Docker command on the server, e.g. /usr/bin/docker or 'sudo docker'.")
@click.option("--remote-containerd-socket", metavar="PATH", help="containerd socket on the server.")
@click.option("--containerd-socket", metavar="PATH", help="Local containerd socket (default $CONTAINERD_ADDRESS or /run/containerd/containerd.sock).")
@click.option("--containerd-namespace", metavar="NS", help="Local containerd namespace (default $CONTAINERD_NAMESPACE or moby).")
@click.option("--docker-host", metavar="URL", help="Local Docker daemon (default $DOCKER_HOST or unix:///var/run/docker.sock).")
@click.option("--via", type=click.Choice(["auto", "containerd", "registry", "load"]), default="auto", show_default=True,
              help="The path into the server: containerd (its socket, forwarded over SSH), registry (a short-lived "
                   "registry container, for docker-group users), load (docker load, for Docker's classic store); "
                   "auto takes the first that works, in that order.")
@click.option("--namespace", metavar="NS", help="containerd namespace on the server (direct path; default: moby with "
              "Docker, k8s.io where containerd serves CRI, else default).")
@click.option("--snapshotter", metavar="NAME", help="Snapshotter to unpack into outside Docker's namespace (default overlayfs).")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=30.0, show_default=True, help="Seconds to wait for a connection or the registry to start.")
@click.option("-v", "--verbose", is_flag=True, help="Say more about each step.")
@click.version_option(__version__, "--version", prog_name="pussh")
def command(image: str, hosts: tuple[str, ...], ssh_keys, ssh_configs, platforms, no_host_key_check, jobs, quiet,
            as_json, registry_image, remote_docker, remote_containerd_socket, containerd_socket, containerd_namespace,
            docker_host, via, namespace, snapshotter, timeout, verbose) -> int:
    """Push IMAGE from the local Docker/containerd image store into the image store of each HOST over
    SSH, sending only the blobs the server does not have."""
    from oci import reference as R
    from oci.manifest import parse_platform

    from .progress import UI
    from .push import PushOptions
    from .ssh import SSHOptions
    from .target import parse_target
    try:
        ref = R.parse(image)
    except R.InvalidReference as err:
        raise UsageError(str(err)) from None
    targets = [parse_target(h) for h in hosts]
    try:
        plats = [parse_platform(p) for p in platforms]
    except ValueError as err:
        raise UsageError(str(err)) from None
    opts = PushOptions(
        registry_image=registry_image, platforms=plats, jobs=jobs, remote_docker=remote_docker,
        remote_containerd_socket=remote_containerd_socket, timeout=timeout, via=via,
        namespace=namespace, snapshotter=snapshotter,
        ssh=SSHOptions(key_files=tuple(ssh_keys), config_files=tuple(ssh_configs),
                       host_key_check=not no_host_key_check, connect_timeout=timeout),
    )
    ui = UI(quiet=quiet or as_json and not sys.stderr.isatty(), verbose=verbose)
    results = _run(_main(ref, targets, opts, ui, containerd_socket, containerd_namespace, docker_host))
    for r in results:
        if as_json:
            click.echo(r.to_json())
        elif r.ok:
            click.echo(r.summary())
        else:
            click.echo(f"pussh: {r.error}", err=True)
    return max((r.exit_code or 1 for r in results if not r.ok), default=0)


async def _main(ref: R.Reference, targets: list[Target], opts: PushOptions, ui: UI, containerd_socket: str | None,
                containerd_namespace: str | None, docker_host: str | None) -> list[HostResult]:
    from .push import connect, push_to_host
    from .source import ImageSource, open_source
    # SSH connections come up while the local image is read.
    connecting = [connect(t, opts) for t in targets]
    try:
        source: ImageSource = await open_source(ref, socket_flag=containerd_socket, namespace_flag=containerd_namespace,
                                                docker_host=docker_host, registry_image=opts.registry_image)
    except BaseException:
        await _close_all(connecting)
        raise
    try:
        with ui:
            return list(await asyncio.gather(*(push_to_host(source, t, opts, ui, c) for t, c in zip(targets, connecting))))
    finally:
        await source.close()


async def _close_all(connecting: list[asyncio.Future]) -> None:
    for c in connecting:
        c.cancel()
    for c in connecting:
        try:
            await (await c).close()
        except BaseException:  # cancelled or failed: nothing to close
            pass


def _run(coro):
    """asyncio.run, with SIGTERM treated like Ctrl-C: the push is cancelled and cleans up."""
    async def runner():
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
    return asyncio.run(runner())


def main(argv: list[str] | None = None, prog_name: str = "pussh") -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as e:  # --help, --version
        rc = e.exit_code
    except click.UsageError as err:
        click.echo(f"{prog_name}: error: {err.format_message()} (see {prog_name} --help)", err=True)
        rc = 2
    except PusshError as err:
        click.echo(f"{prog_name}: {err}", err=True)
        rc = err.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo(f"{prog_name}: interrupted; the server was cleaned up", err=True)
        rc = EXIT_INTERRUPTED
    except click.Abort:
        click.echo(f"{prog_name}: interrupted", err=True)
        rc = EXIT_INTERRUPTED
    except Exception as err:  # a bug: still one line, the traceback on request
        if os.environ.get("PUSSH_DEBUG"):
            raise
        click.echo(f"{prog_name}: unexpected error: {type(err).__name__}: {err} (PUSSH_DEBUG=1 shows the traceback)",
                   err=True)
        rc = 1
    return int(rc or 0)


# Docker's global options, which the docker CLI passes on to a plugin ahead of the plugin's name.
_DOCKER_GLOBAL_VALUE = {"--config", "-c", "--context", "-H", "--host", "-l", "--log-level", "--tlscacert",
                        "--tlscert", "--tlskey"}


def plugin_main() -> int:
    """`docker pussh ...`: Docker runs `docker-pussh [GLOBAL OPTIONS] pussh ARGS`, and
    `docker-pussh docker-cli-plugin-metadata`. A `-H/--host` given to docker picks the local daemon."""
    args = sys.argv[1:]
    if args[:1] == ["docker-cli-plugin-metadata"]:
        print(json.dumps({"SchemaVersion": "0.1.0", "Vendor": "pussh", "Version": __version__,
                          "ShortDescription": "Push an image to a server over SSH, sending only missing blobs"}))
        return 0
    i = 0
    while i < len(args) and args[i] != "pussh" and args[i].startswith("-"):
        opt, eq, value = args[i].partition("=")
        if opt in _DOCKER_GLOBAL_VALUE and not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        if opt in ("-H", "--host") and value:
            os.environ["DOCKER_HOST"] = value
        i += 1
    if args[i:i + 1] == ["pussh"]:
        i += 1
    return main(args[i:], prog_name="docker pussh")
