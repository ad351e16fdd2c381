"""The "remote" Docker host: own net+mount+UTS namespaces, standard daemon paths, reached over real SSH.

A holder process (`unshare ... sleep infinity`) owns the namespaces; in its mount namespace /run,
/var/lib/containerd, /var/lib/docker, /etc/docker, /etc/containerd, /etc/sudoers.d and /etc/hosts are
private bind mounts of directories under /tmp/ptb/r<N>, so /run/containerd/containerd.sock and
/var/run/docker.sock are this host's own. A veth pair 10.232.<N>.1 (root ns) <-> .2 (remote) carries SSH.

store="none" is a Kubernetes-like node instead: containerd with its CRI plugin enabled, no dockerd
(docker() fails; use ctr() or run("ctr", ...); images for kubelet live in namespace k8s.io).
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._proc import (LIVE, STATE_BASE, Daemon, Slot, TestbedError, docker_ping, kill_pids, kill_recorded, ns_inode,
                    pids_in_netns, run, tail, umount_under, unix_connectable, wait_for,
                    with_descendants)
from .local import DockerHostMixin, Store, containerd_toml, daemon_json, require_tools

NFQ_DELAY = Path(__file__).with_name("nfq_delay.py")
# paths made private inside the remote (bind mounts of <dir>/<key>)
PRIVATE_DIRS = {"run": "/run", "var-lib-containerd": "/var/lib/containerd", "var-lib-docker": "/var/lib/docker",
                "etc-docker": "/etc/docker", "etc-containerd": "/etc/containerd", "etc-sudoers.d": "/etc/sudoers.d"}
# The remote's root must not run this machine's ~/.bashrc on every SSH session (bash does, when sshd
# starts it): here it runs `pyenv rehash`, whose lock, left by a session a test killed, made every
# later login wait a minute. An empty file is mounted over it inside the remote.
ROOT_BASHRC = Path("/root/.bashrc")
REMOTE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CRI_NAMESPACE = "k8s.io"


@dataclass(frozen=True)
class RemoteUser:
    name: str  # the real (unique) user name
    alias: str  # ssh Host alias in the remote's ssh_config
    docker_group: bool
    sudo_nopasswd: bool


def parse_delay_ms(delay: str | float | int) -> float:
    """'10ms', '0.5s', '500us' or a number of milliseconds."""
    if isinstance(delay, (int, float)):
        return float(delay)
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|us|s)?\s*", delay)
    if not m:
        raise ValueError(f"bad delay {delay!r}")
    v = float(m.group(1))
    return {"ms": v, None: v, "us": v / 1000, "s": v * 1000}[m.group(2)]


class RemoteHost(DockerHostMixin):
    """A second Docker host on this machine. `ssh_config` + `alias` reach it with plain OpenSSH."""

    where = "remote"

    def __init__(self, store: Store = "containerd", *, rate: str | None = None,
                 delay: str | float | None = None, start: bool = True) -> None:
        self.store: Store = store
        daemon_json(store)
        self.has_docker = store != "none"
        self._daemons: list[Daemon] = []
        self._delayers: list[Daemon] = []
        self._users: list[RemoteUser] = []
        self._holder: Daemon | None = None
        self._slot = Slot("r")
        n = self.n = self._slot.n
        self.netns, self.veth_local, self.veth_remote = f"pussh-tb{n}", f"ptb{n}l", f"ptb{n}r"
        self.local_address, self.address = f"10.232.{n}.1", f"10.232.{n}.2"
        self.queue_num = 4300 + n
        self.hostname = self.alias = f"pussh-tb{n}"
        self.dir = STATE_BASE / f"r{n}"
        ssh = self.dir / "ssh"
        self.ssh_key, self.known_hosts = str(ssh / "id_ed25519"), str(ssh / "known_hosts")
        self.host_key_pub = str(ssh / "ssh_host_ed25519_key.pub")
        self.ssh_config = str(ssh / "ssh_config")
        # paths as seen inside the remote, and the same files as seen from the root namespace
        self.containerd_socket = "/run/containerd/containerd.sock"
        self.docker_socket = "/var/run/docker.sock"
        self.content_root = "/var/lib/containerd/io.containerd.content.v1.content"
        self.containerd_socket_outside = str(self.dir / "run/containerd/containerd.sock")
        self.docker_socket_outside = str(self.dir / "run/docker.sock")
        self.content_root_outside = str(self.dir / "var-lib-containerd/io.containerd.content.v1.content")
        self.shaping: tuple[str | None, float | None] = (None, None)
        self.startup_seconds = 0.0
        self._stopped = False
        LIVE.append(self)
        if start:
            self.start(rate=rate, delay=delay)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, rate: str | None = None, delay: str | float | None = None) -> None:
        t0 = time.monotonic()
        try:
            daemons = ("dockerd", "docker") if self.has_docker else ("ctr",)
            require_tools("containerd", *daemons, "unshare", "nsenter", "ip", "tc", "iptables",
                          "ssh", "ssh-keygen", "useradd")
            if not Path("/usr/sbin/sshd").exists():
                raise TestbedError("missing /usr/sbin/sshd: run scripts/install-system.sh")
            self._sweep_stale()
            # dockerd gives its socket to group "docker" only if it exists (add_user(docker_group=True))
            run(["groupadd", "-f", "docker"])
            self._write_files()
            self._start_holder()
            self._setup_mounts()
            self._setup_veth()
            ctd = self._start_containerd()
            dockerd = self._start_dockerd() if self.has_docker else None
            sshd = self._spawn("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.dir / "ssh/sshd_config")])
            self._wait(ctd, self._containerd_ready, 30, "containerd socket")
            if dockerd is not None:
                self._wait(dockerd, self._dockerd_ready, 60, "dockerd /_ping")
            self._wait(sshd, self._ssh_login_works, 40, "ssh login")
            if rate or delay:
                self.shape(rate, delay)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def _ssh_login_works(self) -> bool:
        try:  # a login that hangs on a loaded machine is one more try, not a failed start
            return self.ssh("true", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _write_files(self) -> None:
        d = self.dir
        for sub in [*PRIVATE_DIRS, "ssh", "logs", "authkeys"]:
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "run/sshd").mkdir()  # sshd privilege separation dir
        (d / "run/lock").mkdir()
        os.chmod(d / "ssh", 0o700)
        os.chmod(d / "etc-sudoers.d", 0o750)
        (d / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.hostname}\n"
                                 f"{self.local_address} pussh-tb-local\n")
        # "none": CNI dirs that do not exist (under our state dir, so they never will)
        cni = None if self.has_docker else str(d / "no-cni")
        (d / "etc-containerd/config.toml").write_text(containerd_toml(cri_cni_dir=cni))
        (d / "etc-docker/daemon.json").write_text(daemon_json(self.store))
        ssh = d / "ssh"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pussh-testbed-client", "-f", self.ssh_key])
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.hostname, "-f",
             str(ssh / "ssh_host_ed25519_key")])
        # sshd reads authorized_keys as the logging-in user: keep it out of the 0700 ssh/ dir
        (d / "authkeys/authorized_keys").write_text(Path(self.ssh_key + ".pub").read_text())
        os.chmod(d / "authkeys/authorized_keys", 0o644)
        keytype, key = Path(self.host_key_pub).read_text().split()[:2]
        Path(self.known_hosts).write_text(f"{self.alias},{self.address} {keytype} {key}\n")
        (ssh / "sshd_config").write_text(f"""\
ListenAddress {self.address}:22
HostKey {ssh}/ssh_host_ed25519_key
AuthorizedKeysFile {d}/authkeys/authorized_keys
PidFile {d}/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# keys live under /tmp (world-writable): StrictModes would refuse them
StrictModes no
UseDNS no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
X11Forwarding no
PrintMotd no
PrintLastLog no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp /usr/lib/openssh/sftp-server
""")
        Path(self.ssh_config).write_text(self._host_block(self.alias, "root"))

    def _host_block(self, alias: str, user: str) -> str:
        return f"""\
Host {alias}
  HostName {self.address}
  Port 22
  User {user}
  IdentityFile {self.ssh_key}
  IdentitiesOnly yes
  UserKnownHostsFile {self.known_hosts}
  GlobalKnownHostsFile /dev/null
  HostKeyAlias {self.alias}
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 5
  ServerAliveInterval 15
"""

    def _start_holder(self) -> None:
        self._holder = Daemon("holder", ["unshare", "--mount", "--net", "--uts", "--propagation", "private",
                                         "sleep", "infinity"], self.dir / "logs/holder.log", pidfile=self.dir / "pids")
        h, mine = self._holder.pid, ns_inode("self")
        # before unshare has switched, nsenter -t h would enter OUR namespaces
        wait_for(lambda: (self._holder.check() is None and ns_inode(h) not in (None, mine)
                          and Path(f"/proc/{h}/comm").read_text().strip() == "sleep"), 10, "namespace holder")
        self.pid = h
        run(["ip", "netns", "attach", self.netns, str(h)])

    def _setup_mounts(self) -> None:
        for target in [*PRIVATE_DIRS.values()]:
            # mount points must exist in the shared root fs; never removed (another run may be using them)
            Path(target).mkdir(parents=True, exist_ok=True)
        binds = [f"mount --bind {shlex.quote(str(self.dir / k))} {v}" for k, v in PRIVATE_DIRS.items()]
        binds.append(f"mount --bind {shlex.quote(str(self.dir / 'hosts'))} /etc/hosts")
        if ROOT_BASHRC.is_file():
            (self.dir / "bashrc").write_text("")
            binds.append(f"mount --bind {shlex.quote(str(self.dir / 'bashrc'))} {ROOT_BASHRC}")
        self.run("sh", "-ec", "\n".join([f"hostname {self.hostname}", *binds, "ip link set lo up"]))

    def _setup_veth(self) -> None:
        run(["ip", "link", "add", self.veth_local, "type", "veth", "peer", "name", self.veth_remote,
             "netns", self.netns])
        Path(f"/proc/sys/net/ipv6/conf/{self.veth_local}/disable_ipv6").write_text("1")
        run(["ip", "addr", "add", f"{self.local_address}/30", "dev", self.veth_local])
        run(["ip", "link", "set", self.veth_local, "up"])
        self.run("sh", "-ec", f"echo 1 > /proc/sys/net/ipv6/conf/{self.veth_remote}/disable_ipv6\n"
                              f"ip addr add {self.address}/30 dev {self.veth_remote}\n"
                              f"ip link set {self.veth_remote} up")

    def _nsenter(self) -> list[str]:
        if self._holder is None or not self._holder.alive():
            raise TestbedError(f"remote {self.alias}: namespace holder is not running")
        return ["nsenter", "-t", str(self._holder.pid), "-m", "-n", "-u", "--"]

    def _env(self) -> dict[str, str]:
        return {"PATH": REMOTE_PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root"}

    def _spawn(self, name: str, argv: list[str], delayer: bool = False) -> Daemon:
        d = Daemon(name, self._nsenter() + argv, self.dir / "logs" / f"{name}.log", env=self._env(),
                   pidfile=self.dir / "pids")
        (self._delayers if delayer else self._daemons).append(d)
        return d

    def _containerd_argv(self) -> list[str]:
        return ["containerd"]  # /etc/containerd/config.toml, /var/lib/containerd, /run/containerd: all private

    def _dockerd_argv(self) -> list[str]:
        return ["dockerd", "--containerd", self.containerd_socket]

    def _containerd_ready(self) -> bool:
        # a Kubernetes-like node is ready when CRI is (restart_containerd() waits for it too)
        return unix_connectable(self.containerd_socket_outside) and (self.has_docker or self._cri_ready())

    def _dockerd_ready(self) -> bool:
        return docker_ping(self.docker_socket_outside)

    def _cri_ready(self) -> bool:
        """CRI's plugin status as `ctr plugins ls` shows it: ok -> True; error -> fail with the reason."""
        p = self.run("ctr", "plugins", "ls", "id==cri", check=False, timeout=10)
        if p.returncode != 0:
            return False
        if re.search(r"^io\.containerd\.grpc\.v1\s+cri\s.*\berror\b", p.stdout, re.M):
            raise TestbedError(f"remote {self.alias}: the CRI plugin failed to load:\n"
                               + self.run("ctr", "plugins", "ls", "-d", "id==cri", check=False, timeout=10).stdout)
        return re.search(r"^io\.containerd\.grpc\.v1\s+cri\s.*\bok\b", p.stdout, re.M) is not None

    def _start_dockerd(self) -> Daemon:
        if not self.has_docker:
            raise TestbedError(f"remote {self.alias} has store 'none': it runs no dockerd")
        return super()._start_dockerd()

    def _sweep_stale(self) -> None:
        """Remove what a crashed run left in this slot (we hold its lock, so that run is gone)."""
        while run(["iptables", "-w", "-t", "raw", "-D", "PREROUTING", *self._delay_rule(self.veth_local)],
                  check=False).returncode == 0:
            pass
        if Path(f"/run/netns/{self.netns}").exists():
            ino = os.stat(f"/run/netns/{self.netns}").st_ino
            kill_pids(with_descendants(pids_in_netns(ino)))
            run(["ip", "netns", "delete", self.netns], check=False)
        run(["ip", "link", "del", self.veth_local], check=False)
        if self.dir.exists():
            kill_recorded(self.dir / "pids")
            for line in (self.dir / "users").read_text().split() if (self.dir / "users").exists() else []:
                run(["userdel", "-r", "-f", line], check=False)
            umount_under(self.dir)
            run(["rm", "-rf", str(self.dir)], check=False)

    def stop(self) -> None:
        """Kill everything this remote started (by PID), delete veth + netns, remove users and state."""
        if self._stopped:
            return
        self._stopped = True
        if self in LIVE:
            LIVE.remove(self)
        try:
            self.unshape()
        except Exception:
            pass
        holder_ok = self._holder is not None and self._holder.alive()
        try:  # best effort: a hung dockerd must not keep us from killing everything below
            if holder_ok and self.has_docker and docker_ping(self.docker_socket_outside):
                ids = self.docker("ps", "-q", check=False, timeout=20).stdout.split()
                if ids:
                    self.docker("kill", *ids, check=False, timeout=30)
        except Exception:
            pass
        for d in reversed(self._daemons):
            d.stop(timeout=30)
        if self._holder is not None:
            ino = ns_inode(self._holder.pid) if holder_ok else None
            if ino is not None and ino != ns_inode("self"):
                # shims, containers, ssh sessions, registries started by tests: everything in the netns
                stray = with_descendants(pids_in_netns(ino)) - {self._holder.pid}
                kill_pids(stray)
            self._holder.kill()
        run(["ip", "link", "del", self.veth_local], check=False)
        if Path(f"/run/netns/{self.netns}").exists():
            run(["ip", "netns", "delete", self.netns], check=False)
        for u in self._users:
            run(["userdel", "-r", "-f", u.name], check=False)
        umount_under(self.dir)
        run(["rm", "-rf", str(self.dir)], check=False)
        self._slot.release()

    def __enter__(self) -> "RemoteHost":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- running things on the remote --------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, input: str | bytes | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """argv inside the remote's namespaces as root (no ssh involved)."""
        return run(self._nsenter() + list(argv), check=check, input=input, env=self._env(), timeout=timeout)

    def docker(self, *args: str, check: bool = True, input: str | bytes | None = None,
               timeout: float | None = None) -> subprocess.CompletedProcess:
        if not self.has_docker:
            raise TestbedError(f"remote {self.alias} has store 'none' (containerd + CRI, no dockerd): "
                               f"no docker {' '.join(args[:1])}; use ctr()")
        return self.run("docker", "-H", f"unix://{self.docker_socket}", *args, check=check, input=input,
                        timeout=timeout)

    def ctr(self, *args: str, namespace: str = CRI_NAMESPACE, check: bool = True, input: str | bytes | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """containerd's ctr inside the remote, in `namespace` (default k8s.io, where CRI keeps images)."""
        return self.run("ctr", "-n", namespace, *args, check=check, input=input, timeout=timeout)

    def ssh_argv(self, user: RemoteUser | None = None) -> list[str]:
        return ["ssh", "-F", self.ssh_config, user.alias if user else self.alias]

    def ssh(self, *remote_cmd: str, check: bool = True, input: str | bytes | None = None,
            user: RemoteUser | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Real OpenSSH. The far side joins argv into one shell string, so we quote it ourselves."""
        return run([*self.ssh_argv(user), "--", shlex.join(remote_cmd)], check=check, input=input,
                   timeout=timeout)

    def logs(self) -> dict[str, str]:
        return {d.name: tail(d.log) for d in self._daemons + self._delayers}


    # -- users -------------------------------------------------------------------------------------------
    def add_user(self, name: str, docker_group: bool = False, sudo_nopasswd: bool = False) -> RemoteUser:
        """A non-root login with the test key. /etc/passwd is global, so the real name gets a -tb<N> suffix."""
        real = f"{name}-tb{self.n}"
        with open(self.dir / "users", "a") as f:  # for the stale sweep of a crashed run
            f.write(real + "\n")
        run(["userdel", "-r", "-f", real], check=False)
        # '*' not '!': with UsePAM no, sshd refuses accounts whose password field starts with '!'
        argv = ["useradd", "-m", "-s", "/bin/bash", "-p", "*"]
        if docker_group:
            argv += ["-G", "docker"]
        run(argv + [real])
        if sudo_nopasswd:
            p = self.dir / "etc-sudoers.d" / real
            p.write_text(f"{real} ALL=(ALL:ALL) NOPASSWD: ALL\n")
            os.chmod(p, 0o440)
        u = RemoteUser(real, f"{self.alias}-{name}", docker_group, sudo_nopasswd)
        with open(self.ssh_config, "a") as f:
            f.write(self._host_block(u.alias, real))
        self._users.append(u)
        return u

    # -- network -----------------------------------------------------------------------------------------
    def _delay_rule(self, dev: str) -> list[str]:
        return ["-i", dev, "-m", "comment", "--comment", self.netns, "-j", "NFQUEUE",
                "--queue-num", str(self.queue_num), "--queue-bypass"]

    def shape(self, rate: str | None = None, delay: str | float | None = None) -> None:
        """rate: tbf on both veth egresses (e.g. '200mbit'); delay: ONE-WAY per direction (RTT = 2 x delay)."""
        self.unshape()
        if rate:
            tbf = ["root", "tbf", "rate", str(rate), "burst", "128kb", "latency", "50ms"]
            run(["tc", "qdisc", "replace", "dev", self.veth_local, *tbf])
            self.run("tc", "qdisc", "replace", "dev", self.veth_remote, *tbf)
        ms = parse_delay_ms(delay) if delay not in (None, "", 0) else None
        if ms:
            # the kernel has no netem: delay in user space via NFQUEUE on each receiving end
            argv = [sys.executable, str(NFQ_DELAY), str(self.queue_num), str(ms)]
            for where in ("local", "remote"):
                log = self.dir / "logs" / f"delay-{where}.log"
                log.unlink(missing_ok=True)
                if where == "local":
                    d = Daemon("delay-local", argv, log, pidfile=self.dir / "pids")
                    self._delayers.append(d)
                else:
                    d = self._spawn("delay-remote", argv, delayer=True)
                self._wait(d, lambda: "ready" in log.read_text(), 10, f"{d.name} ready")  # noqa: B023
            run(["iptables", "-w", "-t", "raw", "-I", "PREROUTING", *self._delay_rule(self.veth_local)])
            self.run("iptables", "-w", "-t", "raw", "-I", "PREROUTING", *self._delay_rule(self.veth_remote))
        self.shaping = (rate or None, ms)

    @contextlib.contextmanager
    def shaped(self, rate: str | None = None, delay: str | float | None = None) -> Iterator["RemoteHost"]:
        self.shape(rate, delay)
        try:
            yield self
        finally:
            self.unshape()

    def unshape(self) -> None:
        run(["tc", "qdisc", "del", "dev", self.veth_local, "root"], check=False)
        while run(["iptables", "-w", "-t", "raw", "-D", "PREROUTING", *self._delay_rule(self.veth_local)],
                  check=False).returncode == 0:
            pass
        if self._holder is not None and self._holder.alive():
            self.run("tc", "qdisc", "del", "dev", self.veth_remote, "root", check=False)
            while self.run("iptables", "-w", "-t", "raw", "-D", "PREROUTING",
                           *self._delay_rule(self.veth_remote), check=False).returncode == 0:
                pass
        for d in self._delayers:
            d.stop(timeout=5)
        self._delayers.clear()
        self.shaping = (None, None)

    def _block_rules(self) -> list[list[str]]:
        c = ["-m", "comment", "--comment", f"{self.netns}-block", "-j", "DROP"]
        return [["INPUT", "-i", self.veth_remote, *c], ["OUTPUT", "-o", self.veth_remote, *c]]

    def block_traffic(self) -> None:
        """Silently drop every packet on the link (in the remote's own netns): connections hang, not reset."""
        for r in self._block_rules():
            self.run("iptables", "-w", "-I", *r)

    def unblock_traffic(self) -> None:
        for r in self._block_rules():
            while self.run("iptables", "-w", "-D", *r, check=False).returncode == 0:
                pass

    def link_bytes(self) -> tuple[int, int]:
        """(tx, rx) of the root-side veth: tx = local -> remote."""
        s = Path(f"/sys/class/net/{self.veth_local}/statistics")
        return int((s / "tx_bytes").read_text()), int((s / "rx_bytes").read_text())

    def __repr__(self) -> str:
        return f"RemoteHost(n={self.n}, alias={self.alias}, address={self.address}, store={self.store})"
