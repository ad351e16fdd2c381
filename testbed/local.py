"""The "local" Docker host: our own containerd + dockerd in the root network namespace, private sockets."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Literal

from ._proc import (LIVE, STATE_BASE, Daemon, Slot, TestbedError, all_pids, cmdline, docker_ping, kill_pids,
                    kill_recorded, run, tail, umount_under, unix_connectable, wait_for, with_descendants)

# "none": no dockerd at all, containerd with CRI (a Kubernetes node); remote hosts only
Store = Literal["containerd", "classic", "none"]
# dockerd must never touch the machine's network: no docker0, no iptables rules, no forwarding
DAEMON_NET = {"bridge": "none", "iptables": False, "ip6tables": False, "ip-forward": False}
_CLIENT_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH",
                "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE")


def daemon_json(store: Store) -> str:
    cfg: dict = dict(DAEMON_NET)
    if store == "containerd":
        cfg["features"] = {"containerd-snapshotter": True}
    elif store not in ("classic", "none"):  # "none" runs no dockerd; its daemon.json is never read
        raise ValueError(f"store must be 'containerd', 'classic' or 'none', not {store!r}")
    return json.dumps(cfg)


def containerd_toml(root: str | None = None, state: str | None = None, address: str | None = None,
                    opt: str = "/var/lib/containerd/opt", cri_cni_dir: str | None = None) -> str:
    """CRI disabled (it wants CNI and would fight other containerds); opt path kept private.

    With `cri_cni_dir` CRI is enabled instead, as on a Kubernetes node: no TCP stream service,
    and CNI dirs under that path that do not exist (CRI only logs that it has no network; its
    image service, all we use, does not need one). Only for a host with its own /run and
    /var/lib/containerd (a remote), where CRI's state and root directories are private too."""
    lines = ["version = 2"]
    if root:
        lines.append(f'root = "{root}"')
    if state:
        lines.append(f'state = "{state}"')
    if cri_cni_dir is None:
        lines.append('disabled_plugins = ["io.containerd.grpc.v1.cri"]')
    if address:
        lines += ["[grpc]", f'  address = "{address}"']
    lines += ['[plugins."io.containerd.internal.v1.opt"]', f'  path = "{opt}"']
    if cri_cni_dir is not None:
        lines += ['[plugins."io.containerd.grpc.v1.cri"]', "  disable_tcp_service = true",
                  '  [plugins."io.containerd.grpc.v1.cri".cni]', f'    bin_dir = "{cri_cni_dir}/bin"',
                  f'    conf_dir = "{cri_cni_dir}/net.d"']
    return "\n".join(lines) + "\n"


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment minus anything that would point a docker/containerd client elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARS}
    env.update(extra)
    return env


def require_tools(*names: str) -> None:
    if os.geteuid() != 0:
        raise TestbedError("the test bed starts real daemons and namespaces: run as root")
    missing = [n for n in names if not shutil.which(n)]
    if missing:
        raise TestbedError(f"missing {', '.join(missing)}: run scripts/install-system.sh")


def sweep_shims(socket_path: str) -> None:
    """Kill (by PID) containerd shims serving our containerd (exact -address match) and their children."""
    roots = []
    for pid in all_pids():
        argv = cmdline(pid)
        if argv and os.path.basename(argv[0]).startswith("containerd-shim") and socket_path in argv:
            roots.append(pid)
    if roots:
        kill_pids(with_descendants(roots))


class DockerHostMixin:
    """What LocalHost and RemoteHost share: docker helpers and control of their two daemons.

    Subclasses keep `_daemons` (start order: containerd first, so stopping in reverse stops dockerd
    first) and provide `_spawn`, the daemons' argv and readiness probes."""

    where = "host"
    _daemons: list[Daemon]

    def docker(self, *args: str, check: bool = True, input: str | bytes | None = None,
               timeout: float | None = None) -> subprocess.CompletedProcess:  # pragma: no cover
        raise NotImplementedError

    def _spawn(self, name: str, argv: list[str]) -> Daemon:  # pragma: no cover
        raise NotImplementedError

    def _containerd_argv(self) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def _dockerd_argv(self) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def _containerd_ready(self) -> bool:  # pragma: no cover
        raise NotImplementedError

    def _dockerd_ready(self) -> bool:  # pragma: no cover
        raise NotImplementedError

    def info(self) -> dict:
        return json.loads(self.docker("info", "--format", "{{json .}}").stdout)

    def diff_ids(self, ref: str) -> list[str]:
        return json.loads(self.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref).stdout)

    def has_image(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def logs(self) -> dict[str, str]:
        return {d.name: tail(d.log) for d in self._daemons}

    def _wait(self, d: Daemon, pred, timeout: float, what: str) -> None:
        """Poll pred; fail early if the daemon died, and put its log tail in the error either way."""
        def ok() -> bool:
            d.check()
            return pred()
        try:
            wait_for(ok, timeout, f"{self.where} {what}")
        except TestbedError as e:
            raise TestbedError(f"{e}\n--- {d.log} ---\n{tail(d.log)}") from None

    def _daemon(self, name: str) -> Daemon | None:
        return next((d for d in reversed(self._daemons) if d.name == name), None)

    def _start_containerd(self) -> Daemon:
        d = self._spawn("containerd", self._containerd_argv())
        self._daemons.remove(d)
        self._daemons.insert(0, d)
        return d

    def _start_dockerd(self) -> Daemon:
        return self._spawn("dockerd", self._dockerd_argv())

    def kill_containerd(self) -> None:
        """SIGKILL containerd (dockerd keeps running and retries); restart_containerd() brings it back."""
        d = self._daemon("containerd")
        if d:
            d.kill()

    def kill_dockerd(self) -> None:
        d = self._daemon("dockerd")
        if d:
            d.kill()

    def restart_containerd(self) -> None:
        old = self._daemon("containerd")
        if old:
            old.stop(timeout=20)
            self._daemons.remove(old)
        self._wait(self._start_containerd(), self._containerd_ready, 30, "containerd socket")

    def restart_dockerd(self) -> None:
        old = self._daemon("dockerd")
        if old:
            old.stop(timeout=30)
            self._daemons.remove(old)
        self._wait(self._start_dockerd(), self._dockerd_ready, 60, "dockerd /_ping")


class LocalHost(DockerHostMixin):
    """containerd + dockerd of our own under /tmp/ptb/l<N>; `env` points clients at them."""

    where = "local"

    def __init__(self, store: Store = "containerd", *, start: bool = True) -> None:
        self.store: Store = store
        daemon_json(store)  # validate early
        if store == "none":
            raise ValueError("a local host needs dockerd: store 'none' is for remote hosts only")
        self._daemons: list[Daemon] = []
        self._slot = Slot("l")
        self.n = self._slot.n
        self.dir = STATE_BASE / f"l{self.n}"
        self.containerd_socket = str(self.dir / "containerd.sock")
        self.docker_socket = str(self.dir / "docker.sock")
        self.docker_host = f"unix://{self.docker_socket}"
        self.content_root = str(self.dir / "ctd-root" / "io.containerd.content.v1.content")
        self.env = {"DOCKER_HOST": self.docker_host, "CONTAINERD_ADDRESS": self.containerd_socket,
                    "CONTAINERD_NAMESPACE": "moby"}
        self.startup_seconds = 0.0
        LIVE.append(self)
        if start:
            self.start()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        try:
            require_tools("containerd", "dockerd", "docker")
            self._sweep_stale()
            d = self.dir
            (d / "logs").mkdir(parents=True)
            (d / "containerd.toml").write_text(containerd_toml(
                str(d / "ctd-root"), str(d / "ctd-state"), self.containerd_socket, str(d / "ctd-opt")))
            (d / "daemon.json").write_text(daemon_json(self.store))
            ctd = self._start_containerd()
            dockerd = self._start_dockerd()  # it retries its containerd connection: start both at once
            self._wait(ctd, self._containerd_ready, 30, "containerd socket")
            self._wait(dockerd, self._dockerd_ready, 60, "dockerd /_ping")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def _spawn(self, name: str, argv: list[str]) -> Daemon:
        d = Daemon(name, argv, self.dir / "logs" / f"{name}.log", env=clean_env(), pidfile=self.dir / "pids")
        self._daemons.append(d)
        return d

    def _containerd_argv(self) -> list[str]:
        return ["containerd", "--config", str(self.dir / "containerd.toml")]

    def _dockerd_argv(self) -> list[str]:
        d = self.dir
        return ["dockerd", "--config-file", str(d / "daemon.json"), "--host", self.docker_host,
                "--data-root", str(d / "docker-root"), "--exec-root", str(d / "docker-exec"),
                "--pidfile", str(d / "docker.pid"), "--containerd", self.containerd_socket]

    def _containerd_ready(self) -> bool:
        return unix_connectable(self.containerd_socket)

    def _dockerd_ready(self) -> bool:
        return docker_ping(self.docker_socket)

    def _sweep_stale(self) -> None:
        """Leftovers of a crashed run that held this slot (our lock proves it is gone)."""
        if not self.dir.exists():
            return
        kill_recorded(self.dir / "pids")
        sweep_shims(self.containerd_socket)
        umount_under(self.dir)
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)

    def stop(self) -> None:
        """Stop everything we started, by PID; idempotent and safe after a partial start."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        if self in LIVE:
            LIVE.remove(self)
        try:
            if docker_ping(self.docker_socket):
                ids = self.docker("ps", "-q", check=False, timeout=20).stdout.split()
                if ids:
                    self.docker("kill", *ids, check=False, timeout=30)
        except Exception:
            pass
        for d in reversed(self._daemons):  # dockerd before containerd
            d.stop(timeout=30)
        sweep_shims(self.containerd_socket)
        umount_under(self.dir)
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)
        self._slot.release()

    def __enter__(self) -> "LocalHost":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------------------------------------
    def docker(self, *args: str, check: bool = True, input: str | bytes | None = None,
               timeout: float | None = None) -> subprocess.CompletedProcess:
        return run(["docker", *args], check=check, input=input, env=clean_env(**self.env), timeout=timeout)

    def __repr__(self) -> str:
        return f"LocalHost(n={self.n}, store={self.store}, docker_host={self.docker_host})"
