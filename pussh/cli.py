"""Command line. `pussh [OPTIONS] IMAGE HOST [HOST...]` (one image) or `pussh [OPTIONS] IMAGE...
--to HOST [--to HOST...]` (several), `pussh compose`, `pussh install-docker-plugin`, `pussh
completion`; and `docker pussh` as a Docker CLI plugin. Hosts are pushed to concurrently, the
images of one host one after another over its one connection; the exit code is non-zero if any failed."""
from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from . import VIAS, __version__
from .errors import NoSuchLocalImage, PusshError, UsageError

if TYPE_CHECKING:  # the rest is imported when a push runs: --version and --help stay fast
    from oci import reference as R

    from .progress import UI
    from .options import HostResult, PushOptions
    from .source import ImageSource
    from .target import Target

DEFAULT_REGISTRY_IMAGE = os.environ.get("PUSSH_REGISTRY_IMAGE") or f"pussh-registry:{__version__}"
EXIT_INTERRUPTED = 130
HOST_METAVAR = "[USER@]HOST[:PORT]"
EXAMPLES = [
    ("pussh myapp:1.2 deploy@prod", "one image, one server (today's form)"),
    ("pussh api:2 worker:2 --to web1 --to web2 --json", "two images to two servers: one SSH connection each, "
                                                        "a blob the images share crosses once"),
    ("pussh compose -f compose.yaml --dry-run prod", "what pushing every service's image would send"),
]


def _ssh_config_hosts(ctx, param, incomplete: str):
    """Shell completion of hosts: the Host names of ~/.ssh/config (no patterns)."""
    from click.shell_completion import CompletionItem
    try:
        text = (Path.home() / ".ssh" / "config").read_text()
    except OSError:
        return []
    names: list[str] = []
    for line in text.splitlines():
        words = line.strip().split()
        if len(words) > 1 and words[0].lower() == "host":
            names += [w for w in words[1:] if not any(c in w for c in "*?!")]
    return [CompletionItem(n) for n in dict.fromkeys(names) if n.startswith(incomplete)]


def _complete_push_args(ctx, param, incomplete: str):
    # The first argument is an image (not completed: that would ask Docker); hosts after it.
    return _ssh_config_hosts(ctx, param, incomplete) if ctx.params.get("args") or ctx.params.get("to_hosts") else []


_COMMON_OPTIONS = [
    click.option("-i", "--ssh-key", "ssh_keys", multiple=True, metavar="FILE", help="SSH private key (repeatable)."),
    click.option("-F", "--ssh-config", "ssh_configs", multiple=True, metavar="FILE",
                 help="SSH client config file (default ~/.ssh/config)."),
    click.option("--platform", "platforms", multiple=True, metavar="OS/ARCH[/VARIANT]",
                 help="Platform(s) of a multi-platform image to push (default: the server's). Repeatable."),
    click.option("--no-host-key-check", is_flag=True, help="Do not verify the server's SSH host key (insecure)."),
    click.option("-j", "--jobs", type=click.IntRange(1, 64), default=4, show_default=True,
                 help="Blobs uploaded in parallel."),
    click.option("-n", "--dry-run", is_flag=True,
                 help="Connect and print what would be sent (blobs, bytes, path); send and change nothing."),
    click.option("-q", "--quiet", is_flag=True, help="No progress output; only errors and the summary."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON result object per host and image on stdout."),
    click.option("--registry-image", default=DEFAULT_REGISTRY_IMAGE, show_default=True,
                 help="Image of the server-side registry."),
    click.option("--remote-docker", metavar="CMD", help="Docker command on the server, e.g. /usr/bin/docker or 'sudo docker'."),
    click.option("--remote-containerd-socket", metavar="PATH", help="containerd socket on the server."),
    click.option("--containerd-socket", metavar="PATH",
                 help="Local containerd socket (default $CONTAINERD_ADDRESS or /run/containerd/containerd.sock)."),
    click.option("--containerd-namespace", metavar="NS",
                 help="Local containerd namespace (default $CONTAINERD_NAMESPACE or moby)."),
    click.option("--docker-host", metavar="URL",
                 help="Local Docker daemon (default $DOCKER_HOST or unix:///var/run/docker.sock)."),
    click.option("--transport", type=click.Choice(["auto", "forward", "stdio"]), default="auto", show_default=True,
                 help="How bytes reach the server's socket: forward (sshd's channels), stdio (a relay command "
                      "on the server, for sshd that forwards nothing); auto: forward where sshd allows it."),
    click.option("--via", type=click.Choice(VIAS), default="auto", show_default=True,
                 help="The path into the server: containerd (its socket, forwarded over SSH), registry (a short-lived "
                      "registry container, for docker-group users), load (docker load, for Docker's classic store); "
                      "auto takes the first that works, in that order."),
    click.option("--namespace", metavar="NS", help="containerd namespace on the server (direct path; default: moby with "
                 "Docker, k8s.io where containerd serves CRI, else default)."),
    click.option("--snapshotter", metavar="NAME",
                 help="Snapshotter to unpack into outside Docker's namespace (default overlayfs)."),
    click.option("--timeout", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
                 help="Seconds to wait for a connection or the registry to start."),
    click.option("--delta/--no-delta", "delta", default=None,
                 help="Send a changed layer as its difference from the layer the server's current image has "
                      "(default: where the result is the same image and it saves time; --delta also where the "
                      "server then stores a layer blob of its own)."),
    click.option("-v", "--verbose", is_flag=True, help="Say more about each step."),
]


def _common(f):
    for opt in reversed(_COMMON_OPTIONS):
        f = opt(f)
    return f


class _Pussh(click.Group):
    """`pussh IMAGE HOST...` is `pussh push IMAGE HOST...`: the first argument that is not an option
    (or an option's value) names a command when it is one (`compose`, ...), else the push. An image
    that happens to be called like a command: `pussh push compose:1 HOST` or `pussh -- compose HOST`."""

    def _value_options(self) -> set[str]:
        out: set[str] = set()
        for cmd in self.commands.values():
            for p in cmd.params:
                if isinstance(p, click.Option) and not p.is_flag and not p.count:
                    out.update(p.opts + p.secondary_opts)
        return out

    def route(self, args: list[str], completing: bool = False) -> list[str]:
        takes_value = self._value_options()
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--":
                break
            if a.startswith("-") and len(a) > 1:
                i += 2 if a in takes_value else 1
                continue
            if a in self.commands:
                return [a, *args[:i], *args[i + 1:]]
            return ["push", *args]
        if i >= len(args) and (completing or {"-h", "--help", "--version"} & set(args)):
            return args  # the group's own: its help, its version, completing a command name
        return ["push", *args]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self.route(list(args), completing=ctx.resilient_parsing))

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, f"[OPTIONS] IMAGE {HOST_METAVAR} [HOST...]")
        formatter.write_usage(ctx.command_path, f"[OPTIONS] IMAGE... --to {HOST_METAVAR} [--to HOST...]", prefix="   or: ")
        formatter.write_usage(ctx.command_path, "COMMAND [ARGS]...", prefix="   or: ")
        self.format_help_text(ctx, formatter)
        push = self.commands["push"]
        push.format_options(click.Context(push, info_name=ctx.info_name, help_option_names=["-h", "--help"]), formatter)
        self.format_commands(ctx, formatter)
        _format_examples(formatter)


def _format_examples(formatter: click.HelpFormatter) -> None:
    with formatter.section("Examples"):
        for cmd, what in EXAMPLES:
            formatter.write_text(f"{cmd}")
            with formatter.indentation():
                formatter.write_text(f"# {what}")


@click.group(cls=_Pussh, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pussh")
def cli() -> None:
    """Push local images from the Docker/containerd image store into the image store of each HOST
    over SSH, sending only the blobs the server does not have.

    With --to, every argument is an image and every --to a server; without it, the first argument
    is the image and the others are servers. Options go before or after the arguments."""


@cli.command("push", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, metavar=f"IMAGE {HOST_METAVAR}... | IMAGE... --to HOST",
                shell_complete=_complete_push_args)
@click.option("--to", "to_hosts", multiple=True, metavar=HOST_METAVAR, shell_complete=_ssh_config_hosts,
              help="A server to push to (repeatable); then every argument is an image.")
@_common
@click.version_option(__version__, "--version", prog_name="pussh")
def push_command(args: tuple[str, ...], to_hosts: tuple[str, ...], **common) -> int:
    """Push images to servers (the default command)."""
    if to_hosts:
        images, hosts = list(args), list(to_hosts)
        if not images:
            raise click.UsageError("Missing argument 'IMAGE' (with --to, every argument is an image)")
    else:
        if not args:
            raise click.UsageError("Missing argument 'IMAGE'")
        if len(args) < 2:
            raise click.UsageError(f"Missing argument '{HOST_METAVAR}' (or give the servers with --to)")
        images, hosts = [args[0]], list(args[1:])
    dupes = sorted({i for i in images if images.count(i) > 1})
    if dupes:
        raise UsageError(f"the image {dupes[0]} is given twice")
    return _push_images([_Item(i) for i in images], hosts, **common)


@cli.command("compose", short_help="Push the image of every service of a compose project.",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("hosts", nargs=-1, required=True, metavar=f"{HOST_METAVAR}...", shell_complete=_ssh_config_hosts)
@click.option("-f", "--file", "files", multiple=True, metavar="FILE",
              help="Compose file (repeatable; default compose.yaml etc. here or in a parent directory, or $COMPOSE_FILE).")
@click.option("-p", "--project-name", metavar="NAME",
              help="Project name (default $COMPOSE_PROJECT_NAME, the file's name:, or the directory's name).")
@click.option("--profile", "profiles", multiple=True, metavar="NAME", help="Profile to enable (repeatable).")
@click.option("-s", "--service", "services", multiple=True, metavar="NAME",
              help="Push only this service's image (repeatable; default every service).")
@_common
def compose_command(hosts, files, project_name, profiles, services, **common) -> int:
    """Push the image of every service of a compose project, named as `docker compose` names it
    (a service with only build: is <project>-<service>). Every image must be here already (docker
    compose build); nothing is sent when one is missing."""
    from .compose import load
    project = load(files, project_name=project_name, profiles=profiles, services=services)
    items = []
    for image, svcs in project.images():
        names = ", ".join(s.name for s in svcs)
        hint = f"docker compose build {svcs[0].name}" if any(s.build for s in svcs) else \
            f"docker compose pull {svcs[0].name}"
        items.append(_Item(image, f"service {names}", f"service {names}: its image {image} is not built locally "
                                                       f"(run {hint})"))
    return _push_images(items, list(hosts), **common)


@cli.command("pull", short_help="Bring a server's image into the local containerd store.",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("host", metavar=HOST_METAVAR, shell_complete=_ssh_config_hosts)
@click.argument("image")
@_common
def pull_command(host: str, image: str, **common) -> int:
    """Copy IMAGE from the server's containerd into the local one (Docker's store when it keeps images
    in containerd), sending only the blobs the local side lacks: the push the other way round, over
    the server's containerd socket forwarded through SSH (root or the socket's group there)."""
    from oci import reference as R

    from .pull import check_via
    try:
        ref = R.parse(image)
    except R.InvalidReference as err:
        raise UsageError(str(err)) from None
    check_via(common["via"])
    return _push_images([_Item(image)], [host], pull=ref, **common)


@cli.command("install-docker-plugin", short_help="Link ~/.docker/cli-plugins/docker-pussh (docker pussh).",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_dir", metavar="DIR", help="Docker's config directory (default $DOCKER_CONFIG or ~/.docker).")
@click.option("--force", is_flag=True, help="Replace a docker-pussh there that is not a link.")
def install_plugin_command(config_dir: str | None, force: bool) -> int:
    """Link DIR/cli-plugins/docker-pussh to this installation's docker-pussh, so that `docker pussh`
    works."""
    entry = _docker_pussh_entry()
    plugins = Path(config_dir or os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker").expanduser() / "cli-plugins"
    link = plugins / "docker-pussh"
    try:
        plugins.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            if os.readlink(link) == str(entry):
                click.echo(f"{link} already links to {entry}")
                return 0
            link.unlink()
        elif link.exists():
            if not force:
                raise PusshError(f"{link} exists and is not a link (pass --force to replace it)")
            link.unlink()
        link.symlink_to(entry)
    except OSError as err:
        raise PusshError(f"cannot link {link}: {err.strerror or err}") from None
    click.echo(f"linked {link} -> {entry}; try: docker pussh --help")
    return 0


def _docker_pussh_entry() -> Path:
    """The docker-pussh script installed with this pussh: next to the running `pussh`, next to the
    interpreter (a virtualenv's bin), or on PATH."""
    import shutil
    candidates = []
    if Path(sys.argv[0]).name in ("pussh", "docker-pussh"):
        candidates.append(Path(sys.argv[0]).absolute().with_name("docker-pussh"))
    candidates.append(Path(sys.executable).absolute().with_name("docker-pussh"))
    found = shutil.which("docker-pussh")
    if found:
        candidates.append(Path(found).absolute())
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise PusshError("no docker-pussh entry point next to pussh or on PATH (install pussh with pip first)")


@cli.command("completion", short_help="Print the shell completion script (bash, zsh, fish).",
             context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> int:
    """Print the shell completion script: eval "$(pussh completion bash)" in ~/.bashrc (zsh: in
    ~/.zshrc; fish: pussh completion fish > ~/.config/fish/completions/pussh.fish)."""
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "pussh", "_PUSSH_COMPLETE").source())
    return 0


@dataclass
class _Item:
    image: str
    context: str | None = None  # e.g. "service web", put ahead of its errors
    not_here: str | None = None  # the message when the image is not in the local store


def _push_images(items: list[_Item], hosts: list[str], *, ssh_keys, ssh_configs, platforms, no_host_key_check, jobs,
                 dry_run, quiet, as_json, registry_image, remote_docker, remote_containerd_socket, containerd_socket,
                 containerd_namespace, docker_host, via, transport, namespace, snapshotter, timeout, verbose,
                 delta=None, pull: R.Reference | None = None) -> int:
    from oci import reference as R
    from oci.manifest import parse_platform

    from .options import PushOptions
    from .progress import UI
    from .ssh import SSHOptions
    from .target import parse_target
    refs = []
    for item in items:
        try:
            refs.append(R.parse(item.image))
        except R.InvalidReference as err:
            raise UsageError(f"{item.context}: {err}" if item.context else str(err)) from None
    if pull is not None and delta is not None:
        raise UsageError("pussh pull sends whole layers: --delta and --no-delta are for pushes")
    if pull is not None and transport == "stdio":
        raise UsageError("pussh pull takes sshd's forwarding only: --transport stdio is for pushes")
    targets = [parse_target(h) for h in hosts]
    if len({str(t) for t in targets}) < len(targets):
        raise UsageError(f"the server {next(str(t) for t in targets if [str(x) for x in targets].count(str(t)) > 1)} "
                         "is given twice")
    try:
        plats = [parse_platform(p) for p in platforms]
    except ValueError as err:
        raise UsageError(str(err)) from None
    opts = PushOptions(
        registry_image=registry_image, platforms=plats, jobs=jobs, remote_docker=remote_docker,
        remote_containerd_socket=remote_containerd_socket, timeout=timeout, via=via, transport=transport,
        namespace=namespace, snapshotter=snapshotter, dry_run=dry_run, delta=delta,
        ssh=SSHOptions(key_files=tuple(ssh_keys), config_files=tuple(ssh_configs),
                       host_key_check=not no_host_key_check, connect_timeout=timeout),
    )
    ui = UI(quiet=quiet or as_json and not sys.stderr.isatty(), verbose=verbose)
    if pull is not None:
        results = _run(_pull(targets[0], pull, opts, ui, containerd_socket, containerd_namespace, docker_host))
    else:
        results = _run(_main(list(zip(items, refs)), targets, opts, ui, containerd_socket, containerd_namespace,
                             docker_host))
    for r in results:
        if as_json:
            click.echo(r.to_json())
        elif r.ok:
            click.echo(r.summary().replace(": pushed ", ": pulled ", 1) if pull is not None else r.summary())
        else:
            click.echo(f"pussh: {r.error}", err=True)
    return max((r.exit_code or 1 for r in results if not r.ok), default=0)


async def _main(images: list[tuple[_Item, R.Reference]], targets: list[Target], opts: PushOptions, ui: UI,
                containerd_socket: str | None, containerd_namespace: str | None,
                docker_host: str | None) -> list[HostResult]:
    from .ssh import start_connect
    # SSH connections come up while the local images are read; every image is found before
    # anything is sent. The local side's modules (grpclib, protobuf, containerd's API: ~80 ms)
    # load in a thread meanwhile: the handshakes mostly wait on the network (measured ~35 of 45 ms).
    connecting = [start_connect(t, opts.ssh) for t in targets]
    sources: list[ImageSource] = []
    try:
        try:
            await asyncio.to_thread(importlib.import_module, f"{__package__}.push")
            from .push import push_images_to_host
            from .source import open_source
            for item, ref in images:
                try:
                    sources.append(await open_source(ref, socket_flag=containerd_socket, namespace_flag=containerd_namespace,
                                                     docker_host=docker_host, registry_image=opts.registry_image))
                except PusshError as err:
                    if item.not_here and isinstance(err, NoSuchLocalImage):
                        raise PusshError(item.not_here) from None
                    if item.context:
                        raise PusshError(f"{item.context}: {err}") from None
                    raise
        except BaseException:
            await _close_all(connecting)
            raise
        with ui:
            per_host = await asyncio.gather(*(push_images_to_host(sources, t, opts, ui, c)
                                              for t, c in zip(targets, connecting)))
        return [r for results in per_host for r in results]
    finally:
        for s in sources:
            await s.close()


async def _pull(target: Target, ref: R.Reference, opts: PushOptions, ui: UI, containerd_socket: str | None,
                containerd_namespace: str | None, docker_host: str | None) -> list[HostResult]:
    from .pull import pull_from_host
    from .source import containerd_address, containerd_namespace as namespace_of
    with ui:
        return [await pull_from_host(target, ref, opts, ui, socket=containerd_address(containerd_socket),
                                     namespace=namespace_of(containerd_namespace), docker_host=docker_host)]


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
        rc = cli.main(args=args, prog_name=prog_name, standalone_mode=False, complete_var="_PUSSH_COMPLETE")
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


def _exit_now(rc: int) -> NoReturn:
    """The program's exit without the interpreter's teardown of every module and object: 70-250 ms
    of CPU at the end of each push (measured), spent when everything the push opened is closed and
    its output written. Only the output is left to flush."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a reader that went away (a closed pipe): as Python's own exit reports it
        rc = rc or 120
    os._exit(rc)


def run() -> NoReturn:
    """The `pussh` program."""
    _exit_now(main())


def plugin_run() -> NoReturn:
    """The `docker-pussh` program (the Docker CLI plugin)."""
    _exit_now(plugin_main())
