"""`pussh-registry` / `python -m registry`: serve the registry until SIGTERM or SIGINT.

Every option has an environment variable (flags win). The bearer token is never taken from the
command line (it would show in `ps` and `docker inspect`): use PUSSH_REGISTRY_TOKEN or
--token-file. On start, exactly one line goes to stdout:
    pussh-registry listening on http://HOST:PORT      (or  unix:PATH)
everything else (logs) goes to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import stat
import sys
from datetime import timedelta

from aiohttp import web

from ctrd import DEFAULT_NAMESPACE, DEFAULT_SOCKET
from ctrd import errors as CE

from .app import INFLIGHT, Config, make_app

log = logging.getLogger("pussh.registry")

ENV = {
    "listen": "PUSSH_REGISTRY_LISTEN",
    "containerd": "PUSSH_REGISTRY_CONTAINERD",
    "namespace": "PUSSH_REGISTRY_NAMESPACE",
    "token_file": "PUSSH_REGISTRY_TOKEN_FILE",
    "upload_expiry": "PUSSH_REGISTRY_UPLOAD_EXPIRY",
    "log_level": "PUSSH_REGISTRY_LOG_LEVEL",
    "log_format": "PUSSH_REGISTRY_LOG_FORMAT",
    "shutdown_timeout": "PUSSH_REGISTRY_SHUTDOWN_TIMEOUT",
}
TOKEN_ENV = "PUSSH_REGISTRY_TOKEN"
# aiohttp stops reading a request body once this much is buffered; its 64 KiB default made the
# socket pause and resume hundreds of times per batch (measured: ~15 % slower uploads), while
# much more only costs memory per upload (benchmarks/registry_throughput.py).
READ_BUFSIZE = 1 << 20


def parse_args(argv: list[str] | None = None, env: dict[str, str] | None = None) -> argparse.Namespace:
    env = dict(os.environ if env is None else env)
    p = argparse.ArgumentParser(prog="pussh-registry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default=env.get(ENV["listen"], "127.0.0.1:5000"),
                   help="HOST:PORT (port 0 picks a free one) or a unix socket path [env %(env)s; %(default)s]"
                   .replace("%(env)s", ENV["listen"]))
    p.add_argument("--containerd", default=env.get(ENV["containerd"], env.get("CONTAINERD_ADDRESS", DEFAULT_SOCKET)),
                   help=f"containerd socket [env {ENV['containerd']}; %(default)s]")
    p.add_argument("--namespace", default=env.get(ENV["namespace"], env.get("CONTAINERD_NAMESPACE", DEFAULT_NAMESPACE)),
                   help=f"containerd namespace (Docker's image store is 'moby') [env {ENV['namespace']}; %(default)s]")
    p.add_argument("--token-file", default=env.get(ENV["token_file"]),
                   help=f"file holding the bearer token every request must carry [env {ENV['token_file']}, "
                        f"or the token itself in {TOKEN_ENV}]")
    p.add_argument("--upload-expiry", type=float, default=float(env.get(ENV["upload_expiry"], 3600)),
                   help=f"seconds an upload (and a blob no manifest claimed) is kept [env {ENV['upload_expiry']}; %(default)s]")
    p.add_argument("--shutdown-timeout", type=float, default=float(env.get(ENV["shutdown_timeout"], 60)),
                   help=f"seconds to let requests in flight finish on SIGTERM [env {ENV['shutdown_timeout']}; %(default)s]")
    p.add_argument("--log-level", default=env.get(ENV["log_level"], "info"),
                   choices=["debug", "info", "warning", "error"], type=str.lower,
                   help=f"[env {ENV['log_level']}; %(default)s]")
    p.add_argument("--log-format", default=env.get(ENV["log_format"], "text"), choices=["text", "json"],
                   type=str.lower, help=f"[env {ENV['log_format']}; %(default)s]")
    args = p.parse_args(argv)
    args.token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                args.token = f.read().strip()
        except OSError as err:
            p.error(f"cannot read the token file: {err}")
    elif env.get(TOKEN_ENV):
        args.token = env[TOKEN_ENV].strip()
    if args.token is not None and not args.token:
        p.error("the token is empty")
    if args.upload_expiry <= 0:
        p.error("--upload-expiry must be positive")
    return args


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def parse_listen(listen: str) -> tuple[str, int] | str:
    """(host, port) for TCP, or a path for a unix socket (anything with a slash, or unix:PATH)."""
    if listen.startswith("unix:"):
        return listen[5:]
    if "/" in listen:
        return listen
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"invalid listen address {listen!r}: use HOST:PORT or a socket path")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


async def serve(config: Config, listen: tuple[str, int] | str, shutdown_timeout: float = 60.0) -> None:
    app = make_app(config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           read_bufsize=READ_BUFSIZE)
    await runner.setup()
    try:
        if isinstance(listen, str):
            if os.path.exists(listen) and stat.S_ISSOCK(os.stat(listen).st_mode):
                os.unlink(listen)  # a stale socket from an earlier run
            site: web.BaseSite = web.UnixSite(runner, listen)
            await site.start()
            where = f"unix:{listen}"
        else:
            host, port = listen
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
            server = site._server
            assert server is not None
            sockets = [s for s in server.sockets if s.family in (socket.AF_INET, socket.AF_INET6)]  # type: ignore[union-attr]
            port = sockets[0].getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            where = f"http://{shown}:{port}"
        print(f"pussh-registry listening on {where}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: finishing requests in flight (up to %ss)", shutdown_timeout)
        for s in list(runner.sites):
            await s.stop()  # no new connections
        if not await app[INFLIGHT].drain(shutdown_timeout):
            log.warning("stopping: requests still in flight after %ss are cut off", shutdown_timeout)
    finally:
        # Closes the connections (what is left of them), then the storage, which ends open write
        # streams gracefully (their ingests keep the data until the upload's lease expires).
        await runner.cleanup()


def socket_permission_hint(path: str) -> str:
    """What to add when the socket cannot be opened. The image runs as uid 65532, which may open the
    socket (mode 0660) only as a member of its group, and `docker run` adds that group only when told."""
    try:
        st = os.stat(path)
        group, mode = str(st.st_gid), f", mode {stat.S_IMODE(st.st_mode):04o}"
    except OSError:
        group, mode = "GID", ""
    groups = ",".join(map(str, sorted(set(os.getgroups()) | {os.getgid()})))
    return (f"uid {os.getuid()} (groups {groups}) may not open the socket (group {group}{mode}): run the "
            f'container with --group-add "$(stat -c %g {path})" (the socket\'s group, here {group}), '
            f"or with --user 0; outside a container, run pussh-registry as a member of group {group}")


def _permission_denied(err: BaseException) -> bool:
    seen: BaseException | None = err
    for _ in range(8):  # the cause chain: ctrd's Unavailable from the PermissionError of the connect
        if seen is None:
            return False
        if isinstance(seen, PermissionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        listen = parse_listen(args.listen)
    except ValueError as err:
        print(f"pussh-registry: {err}", file=sys.stderr)
        sys.exit(2)
    config = Config(containerd_socket=args.containerd, namespace=args.namespace, token=args.token,
                    upload_expiry=timedelta(seconds=args.upload_expiry))
    try:
        asyncio.run(serve(config, listen, args.shutdown_timeout))
    except CE.ContainerdError as err:
        print(f"pussh-registry: containerd at {args.containerd}: {err}", file=sys.stderr)
        if _permission_denied(err):
            print(f"pussh-registry: {socket_permission_hint(args.containerd)}", file=sys.stderr)
        sys.exit(1)
    except OSError as err:
        print(f"pussh-registry: cannot listen on {args.listen}: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
