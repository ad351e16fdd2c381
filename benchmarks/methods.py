"""The three ways of moving an image that the benchmark compares. Each method knows how to prepare a
server, how to put it back to "never pushed to" (reset), and how to push one image to one or more
servers; `push` runs the real commands and returns what the client processes cost (wait4 rusage).

- save-load: `docker save IMAGE | ssh HOST docker load` (with several servers, one `docker save`
  through `tee` into one ssh per server)
- registry: `docker push` through an `ssh -L` tunnel to a distribution registry (Debian's
  docker-registry) listening on the server's 127.0.0.1:5000, then `docker pull` on the server over ssh
  (the tunnel's setup is inside the timing; the registry runs all the time, like a service)
- pussh: `pussh --json -q -F CONFIG IMAGE HOST...` (--via auto: for the benchmark's root user the direct
  path, into the server's containerd over a forwarded socket)
- pussh-registry: the same with `--via registry` (a registry container per push: what a docker-group
  user gets)
- pussh-delta: the same with `--delta` (S9 only: the sub-layer delta, forced)
- ctr-import: `docker save IMAGE | ssh HOST ctr -n k8s.io images import -`, for servers without Docker
  (a Kubernetes node: containerd with CRI); ctr imports and unpacks
- ssh-stream: as many bytes as the image's blobs through one `ssh HOST 'cat > /dev/null'`, first push
  only: no image tool at all, so what this test bed's link and ssh carry at best (the floor in practice)
Each method names the server stores it applies to (`stores`); a scenario runs the methods that apply.
"""
from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .bed import CRI_NAMESPACE, REGISTRY_IMAGE, REPO, Bed
from .measure import Client, Ran, run_client

REGISTRY_PORT = 5000  # the distribution registry, on each server's own loopback


@dataclass
class Outcome:
    seconds: float
    ok: bool
    error: str = ""
    client_cpu: float = 0.0
    client_rss: int = 0
    details: dict = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def add(self, r: Ran) -> None:
        self.client_cpu += r.cpu
        self.client_rss = max(self.client_rss, r.maxrss)
        self.commands.append(shlex.join(r.argv))
        if r.rc != 0 and self.ok:
            self.ok = False
            self.error = f"{shlex.join(r.argv)[:200]} -> rc {r.rc}: {(r.stderr or r.stdout).strip()[-600:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Method:
    name = ""
    label = ""
    groups: tuple[str, ...] | None = None  # the scenario groups it runs in (None: every one)
    stores: tuple[str, ...] = ("containerd", "classic")  # the server stores it can push to
    registry_comm: str | None = None  # name of registry processes that appear during a push
    scenarios: tuple[str, ...] | None = None  # the only scenarios it is measured in (None: every one)

    def __init__(self, bed: Bed, workdir: Path) -> None:
        self.bed, self.workdir = bed, workdir

    def prepare(self, remote) -> None:
        """Once per server, before any measurement."""

    def reset(self, local, remotes: Sequence) -> None:
        """The servers as if never pushed to: no bench image, no cached layers anywhere."""
        for r in remotes:
            self.bed.remove_images(r)

    def registry_pids(self, remotes: Sequence) -> list[int]:
        return []

    def push(self, local, image: str, remotes: Sequence) -> Outcome:
        raise NotImplementedError

    def piped(self, local, remotes: Sequence, producer: str, remote_cmd: str) -> Outcome:
        """`PRODUCER | ssh HOST REMOTE_CMD` to one server, timed as one client command."""
        if len(remotes) != 1:
            raise ValueError(f"{self.name}: one server at a time")
        script = (f"{producer} | ssh -F {shlex.quote(self.bed.ssh_config)} "
                  f"{shlex.quote(self.bed.alias(remotes[0]))} {shlex.quote(remote_cmd)}")
        r = run_client(["bash", "-o", "pipefail", "-c", script], self.bed.local_env(local), self.workdir, self.name)
        out = Outcome(r.seconds, True)
        out.add(r)
        out.commands = [script]
        return out

    def stop(self) -> None:
        pass

    @staticmethod
    def templates() -> list[str]:
        return []


class SaveLoad(Method):
    name, label = "save-load", "docker save | ssh | docker load"

    @staticmethod
    def templates() -> list[str]:
        return ["docker save IMAGE | ssh -F CONFIG HOST 'docker load -q'",
                "several servers: docker save IMAGE | tee FIFO1 FIFO2 | ssh -F CONFIG HOST3 'docker load -q' "
                "with ssh -F CONFIG HOSTn 'docker load -q' < FIFOn running alongside"]

    def push(self, local, image: str, remotes: Sequence) -> Outcome:
        cfg = self.bed.ssh_config
        load = shlex.quote("docker load -q")
        ssh = [f"ssh -F {shlex.quote(cfg)} {shlex.quote(self.bed.alias(r))} {load}" for r in remotes]
        if len(remotes) == 1:
            script = f"docker save {shlex.quote(image)} | {ssh[0]}"
        else:
            fifo_dir = self.workdir / "fifos"
            shutil.rmtree(fifo_dir, ignore_errors=True)
            fifo_dir.mkdir()
            fifos = [str(fifo_dir / str(i)) for i in range(len(remotes) - 1)]
            lines = [f"mkfifo {' '.join(map(shlex.quote, fifos))}"]
            for i, f in enumerate(fifos):
                lines.append(f"{ssh[i]} < {shlex.quote(f)} > /dev/null & p{i}=$!")
            lines.append(f"docker save {shlex.quote(image)} | tee {' '.join(map(shlex.quote, fifos))} | {ssh[-1]}; rc=$?")
            lines += [f"wait $p{i} || rc=1" for i in range(len(fifos))]
            lines.append("exit $rc")
            script = "\n".join(lines)
        env = self.bed.local_env(local)
        r = run_client(["bash", "-o", "pipefail", "-c", script], env, self.workdir, "save-load")
        out = Outcome(r.seconds, True)
        out.add(r)
        out.commands = [script]
        return out


class RegistryPath(Method):
    name, label = "registry", "docker push via ssh -L + docker pull"

    def __init__(self, bed: Bed, workdir: Path) -> None:
        super().__init__(bed, workdir)
        self.procs: dict[str, subprocess.Popen] = {}
        self.remotes: dict[str, object] = {}

    @staticmethod
    def templates() -> list[str]:
        return ["server (once, a service): docker-registry serve CONFIG.yml  # 127.0.0.1:5000, filesystem storage",
                "docker tag IMAGE localhost:PORT/IMAGE   (untimed)",
                "ssh -F CONFIG -N -o ExitOnForwardFailure=yes -L 127.0.0.1:PORT:127.0.0.1:5000 HOST &  "
                "# timed from here; wait until PORT accepts",
                "docker push -q localhost:PORT/IMAGE",
                "ssh -F CONFIG HOST 'docker pull -q localhost:5000/IMAGE && docker tag localhost:5000/IMAGE IMAGE'",
                "several servers: the same per server, all at once (one registry per server)"]

    def _dir(self, remote) -> Path:
        return self.bed.remote_dir(remote) / "bench-registry"

    def prepare(self, remote) -> None:
        d = self._dir(remote)
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "config.yml").write_text(f"""\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {d / 'data'}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{REGISTRY_PORT}
""")
        self.remotes[self.bed.alias(remote)] = remote
        self._start(remote)

    def _start(self, remote) -> None:
        d = self._dir(remote)
        with open(d / "registry.log", "ab") as log:
            p = subprocess.Popen(self.bed.nsenter(remote) + ["docker-registry", "serve", str(d / "config.yml")],
                                 env=self.bed.remote_env(), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[self.bed.alias(remote)] = p
        deadline = time.monotonic() + 20
        probe = self.bed.nsenter(remote) + ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{REGISTRY_PORT}"]
        while subprocess.run(probe, capture_output=True).returncode != 0:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start on {self.bed.alias(remote)}: "
                                   f"{(d / 'registry.log').read_text()[-1000:]}")
            time.sleep(0.05)

    def _stop_one(self, alias: str) -> None:
        p = self.procs.pop(alias, None)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def reset(self, local, remotes: Sequence) -> None:
        super().reset(local, remotes)
        for r in remotes:  # an empty registry: restarted on empty storage
            self._stop_one(self.bed.alias(r))
            shutil.rmtree(self._dir(r) / "data", ignore_errors=True)
            (self._dir(r) / "data").mkdir()
            self._start(r)

    def registry_pids(self, remotes: Sequence) -> list[int]:
        return [self.procs[self.bed.alias(r)].pid for r in remotes if self.bed.alias(r) in self.procs]

    def stop(self) -> None:
        for alias in list(self.procs):
            self._stop_one(alias)

    def push(self, local, image: str, remotes: Sequence) -> Outcome:
        env = self.bed.local_env(local)
        cfg = self.bed.ssh_config
        ports = {self.bed.alias(r): free_port() for r in remotes}
        for port in ports.values():
            local.docker("tag", image, f"localhost:{port}/{image}")
        results: dict[str, list[Ran]] = {}
        errors: list[str] = []

        def one(remote) -> None:
            alias = self.bed.alias(remote)
            port = ports[alias]
            ran: list[Ran] = results.setdefault(alias, [])
            tunnel = Client(["ssh", "-F", cfg, "-N", "-o", "ExitOnForwardFailure=yes", "-L",
                             f"127.0.0.1:{port}:127.0.0.1:{REGISTRY_PORT}", alias], env, self.workdir, f"tunnel-{alias}")
            try:
                while True:  # the tunnel is up when its local port accepts
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        if tunnel.proc.poll() is not None:
                            raise RuntimeError("ssh -L exited") from None
                        time.sleep(0.01)
                ran.append(run_client(["docker", "push", "-q", f"localhost:{port}/{image}"], env, self.workdir,
                                      f"push-{alias}"))
                if ran[-1].rc == 0:
                    src = f"localhost:{REGISTRY_PORT}/{image}"
                    cmd = f"docker pull -q {shlex.quote(src)} && docker tag {shlex.quote(src)} {shlex.quote(image)}"
                    ran.append(run_client(["ssh", "-F", cfg, alias, cmd], env, self.workdir, f"pull-{alias}"))
            except Exception as e:
                errors.append(f"{alias}: {e}")
            finally:
                self._end[alias] = time.monotonic()
                ran.append(tunnel.terminate())

        self._end: dict[str, float] = {}
        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(r,)) for r in remotes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = Outcome(max(self._end.values()) - t0, not errors, "; ".join(errors))
        for ran in results.values():
            for i, r in enumerate(ran):
                if i == len(ran) - 1:  # the tunnel: ended by us (SIGTERM), its exit code says nothing
                    out.client_cpu += r.cpu
                    out.client_rss = max(out.client_rss, r.maxrss)
                    out.commands.insert(0, shlex.join(r.argv) + " &")
                else:
                    out.add(r)
        for port in ports.values():
            local.docker("rmi", f"localhost:{port}/{image}", check=False)
        return out


class CtrImport(Method):
    name, label = "ctr-import", "docker save + ssh + ctr import"
    stores = ("none",)

    @staticmethod
    def templates() -> list[str]:
        return ["docker save IMAGE | ssh -F CONFIG HOST 'ctr -n k8s.io images import -'  # imports and unpacks"]

    def push(self, local, image: str, remotes: Sequence) -> Outcome:
        return self.piped(local, remotes, f"docker save {shlex.quote(image)}", f"ctr -n {CRI_NAMESPACE} images import -")


class SshStream(Method):
    name, label = "ssh-stream", "the image's bytes through one ssh stream"
    groups = ("main",)
    scenarios = ("S1",)

    @staticmethod
    def templates() -> list[str]:
        return ["head -c BYTES /dev/zero | ssh -F CONFIG HOST 'cat > /dev/null'  # BYTES: the image's blobs",
                "(no image tool: the link and ssh alone; ssh compresses nothing, so zeros cost what any bytes do)"]

    def push(self, local, image: str, remotes: Sequence) -> Outcome:
        blobs = self.bed.image_blobs(local, image)
        if blobs is None:
            raise ValueError("ssh-stream: from a containerd-store client")
        total = blobs["index"] + blobs["manifest"] + blobs["config"] + sum(s for _, s in blobs["layers"])
        return self.piped(local, remotes, f"head -c {total} /dev/zero", "cat > /dev/null")


class Pussh(Method):
    name, label = "pussh", "pussh"
    registry_comm = "pussh-registry"
    stores = ("containerd", "classic", "none")
    via: str | None = None  # None: auto

    def __init__(self, bed: Bed, workdir: Path) -> None:
        super().__init__(bed, workdir)
        self.cache = workdir / "pussh-cache"
        exe = REPO / ".venv/bin/pussh"
        # a worktree whose .venv is another checkout's: its entry script imports that checkout's pussh
        own = (REPO / ".venv").resolve().parent == REPO.resolve()
        self.argv0 = [str(exe)] if exe.exists() and own else [str(REPO / ".venv/bin/python"), "-m", "pussh"]

    @staticmethod
    def templates() -> list[str]:
        return ["pussh --json -q -F CONFIG --registry-image pussh-registry:bench IMAGE HOST [HOST...]",
                "(--via auto; PUSSH_CACHE_DIR emptied before each first push: a classic-store client compresses again)"]

    def prepare(self, remote) -> None:
        if self.bed.store(remote) != "none":  # as on a server pussh has pushed to before (pussh-registry's)
            self.bed.install_registry_image(remote)

    def reset(self, local, remotes: Sequence) -> None:
        super().reset(local, remotes)
        shutil.rmtree(self.cache, ignore_errors=True)

    def argv(self, image: str, remotes: Sequence, *extra: str) -> list[str]:
        via = ["--via", self.via] if self.via else []
        return [*self.argv0, "--json", "-q", "-F", self.bed.ssh_config, "--registry-image", REGISTRY_IMAGE, *via,
                *extra, image, *(self.bed.alias(r) for r in remotes)]

    def env(self, local) -> dict[str, str]:
        return self.bed.local_env(local, PUSSH_CACHE_DIR=str(self.cache), PYTHONPATH=str(REPO))

    def push(self, local, image: str, remotes: Sequence) -> Outcome:
        r = run_client(self.argv(image, remotes), self.env(local), self.workdir, "pussh", cwd=str(REPO))
        out = Outcome(r.seconds, True)
        out.add(r)
        hosts = []
        for line in r.stdout.splitlines():
            try:
                hosts.append(json.loads(line))
            except ValueError:
                pass
        out.details["hosts"] = [{k: h.get(k) for k in ("host", "ok", "error", "blobs_sent", "blobs_skipped",
                                                        "bytes_sent", "bytes_skipped", "seconds", "via", "namespace",
                                                        "digest", "delta")}
                                for h in hosts]
        if out.ok and (len(hosts) != len(remotes) or not all(h.get("ok") for h in hosts)):
            out.ok = False
            out.error = "; ".join(str(h.get("error")) for h in hosts if not h.get("ok")) or r.stderr[-600:]
        return out


class PusshRegistry(Pussh):
    name, label = "pussh-registry", "pussh --via registry"
    stores = ("containerd",)  # a classic-store server has no registry path (pussh loads there)
    via = "registry"

    @staticmethod
    def templates() -> list[str]:
        return ["pussh --json -q -F CONFIG --registry-image pussh-registry:bench --via registry IMAGE HOST [HOST...]",
                "(a registry container started on the server per push: the path of a docker-group user)"]


class PusshStdio(Pussh):
    name, label = "pussh-stdio", "pussh --transport stdio"
    stores = ("containerd",)
    groups = ("main",)  # S1-S3: the relay beside the forward (issue "Hardened servers")

    def argv(self, image: str, remotes: Sequence, *extra: str) -> list[str]:
        return super().argv(image, remotes, "--transport", "stdio", *extra)

    @staticmethod
    def templates() -> list[str]:
        return ["pussh --json -q -F CONFIG --registry-image pussh-registry:bench --transport stdio IMAGE HOST",
                "(the direct path over a relay command's stdin/stdout, as on a server whose sshd forwards nothing)"]


class PusshDelta(Pussh):
    name, label = "pussh-delta", "pussh --delta"
    stores = ("containerd", "classic")
    groups = ("delta", "delta-classic")  # S9: the sub-layer delta forced (opt-in on a containerd store)

    def argv(self, image: str, remotes: Sequence, *extra: str) -> list[str]:
        return super().argv(image, remotes, "--delta", *extra)

    @staticmethod
    def templates() -> list[str]:
        return ["pussh --json -q -F CONFIG --registry-image pussh-registry:bench --delta IMAGE HOST",
                "(a changed layer rebuilt on the server from the layer of the image it has: a containerd store "
                "then keeps a blob gzipped there, under a rewritten manifest)"]


METHODS = {m.name: m for m in (SaveLoad, RegistryPath, PusshRegistry, Pussh, PusshStdio, PusshDelta, CtrImport, SshStream)}
