"""pussh against the test bed for the reliability suite: images built with fixed layers, the real
CLI as a process we can hurt, progress measured on the wire, and what the server must look like
after a fault (the tag whole, old or new, runnable; no registry or upload left over)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from ctrd import Containerd
from oci import reference as R
from pussh_support import PYTHON, REGISTRY_IMAGE, REPO_ROOT
from relsupport import expire_uploads, report, wait_until
from testbed import build_test_images
from testbed._proc import cmdline, kill_pids, ns_inode, pids_in_netns

RUN_CMD = ["sh", "-c", "md5sum /data/*/random.bin"]  # what a container of a test image prints
MiB = 1 << 20


def full_name(image: str) -> str:
    return R.parse(image).name


def build_pair(local, name: str, big_mb: float, small_mb: float = 2) -> tuple[str, str]:
    """Two local images `<name>-old` and `<name>-new` with fixed layers (busybox, `small_mb`, and a
    last layer of `big_mb` MiB that differs): the new one shares all but its last layer."""
    old, new = f"{name}-old:1", f"{name}-new:1"
    build_test_images(local, {old: 1, new: 2}, [small_mb, big_mb], seed=name, text_mb=0.25)
    return old, new


def blobs_of(host_socket: str, image: str) -> dict[str, int]:
    """Config and layer digests -> size of every manifest of an image in a containerd store: the
    platform's, and the attestation manifest that comes with it (pussh sends both). Test images are
    single-platform."""
    async def read() -> dict[str, int]:
        async with Containerd(host_socket, "moby") as c:
            img = await c.images.get(full_name(image))
            body = json.loads(await c.content.read_all(img.target.digest))
            manifests = [json.loads(await c.content.read_all(m["digest"])) for m in body["manifests"]] \
                if "manifests" in body else [body]
            out = {}
            for m in manifests:
                out.update({l["digest"]: l["size"] for l in m["layers"]})
                out[m["config"]["digest"]] = m["config"]["size"]
            return out
    return asyncio.run(read())


def run_output(host, image: str) -> str:
    """What a container of `image` prints (docker run -d + wait + logs: `run --rm` drops output now
    and then on dockerd 26)."""
    cid = host.docker("run", "-d", "--pull", "never", "--network", "none", image, *RUN_CMD).stdout.strip()
    try:
        status = host.docker("wait", cid, timeout=120).stdout.strip()
        logs = host.docker("logs", cid).stdout.strip()
        assert status == "0", (status, logs)
        return logs
    finally:
        host.docker("rm", "-f", cid, check=False)


def env_for(local) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOCKER_HOST", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE", "SSH_AUTH_SOCK")}
    env.update(local.env)
    return env


@dataclass
class Push:
    """A running `pussh --json` we can watch and hurt."""

    proc: subprocess.Popen
    out: str = ""
    err: str = ""

    def wait(self, timeout: float = 600) -> "Push":
        self.out, self.err = self.proc.communicate(timeout=timeout)
        return self

    @property
    def rc(self) -> int | None:
        return self.proc.returncode

    def result(self) -> dict:
        lines = [l for l in self.out.splitlines() if l.startswith("{")]
        assert len(lines) == 1, (self.rc, self.out, self.err)
        return json.loads(lines[0])


def start_push(local, remote, image: str, *extra: str, target: str | None = None, env: dict | None = None) -> Push:
    argv = [PYTHON, "-m", "pussh", "--json", "-F", remote.ssh_config, "--registry-image", REGISTRY_IMAGE, *extra,
            image, target or remote.alias]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**env_for(local), **(env or {})}, cwd=str(REPO_ROOT), start_new_session=True)
    return Push(p)


def push(local, remote, image: str, *extra: str, **kw) -> dict:
    p = start_push(local, remote, image, *extra, **kw).wait()
    assert p.rc == 0, (p.rc, p.out, p.err)
    res = p.result()
    assert res["ok"], res
    return res


def one_line_error(p: Push) -> str:
    """A failed push says why in one line on stderr, without a traceback."""
    assert p.rc not in (0, None), (p.rc, p.out, p.err)
    assert "Traceback" not in p.err, p.err
    res = p.result()
    assert not res["ok"] and res["error"], res
    return res["error"]


# -- progress on the wire ----------------------------------------------------------------------------

@dataclass
class Wire:
    """Bytes from here to the remote on its veth, and how many of them one payload byte costs
    (SSH + TCP framing), measured on a complete push."""

    remote: object
    overhead: float = 1.0
    base: int = field(default=0)

    def sent(self) -> int:
        return self.remote.link_bytes()[0]

    def mark(self) -> None:
        self.base = self.sent()

    def payload(self) -> float:
        return (self.sent() - self.base) / self.overhead

    def calibrate(self, payload_bytes: int) -> None:
        self.overhead = max((self.sent() - self.base) / payload_bytes, 1.0)


def wait_payload(wire: Wire, p: Push, nbytes: float, timeout: float = 300) -> float:
    """Poll (10 ms) until about `nbytes` of payload crossed the link; returns what had."""
    deadline = time.monotonic() + timeout
    while True:
        got = wire.payload()
        if got >= nbytes:
            return got
        assert p.proc.poll() is None, f"the push ended first: {p.wait().out} {p.err}"
        assert time.monotonic() < deadline, f"only {got:.0f} of {nbytes:.0f} bytes in {timeout}s"
        time.sleep(0.01)


# -- the server side ---------------------------------------------------------------------------------

def ssh_sessions(remote) -> list[int]:
    """sshd's per-connection processes in the remote's namespace (not the listener)."""
    out = []
    for pid in pids_in_netns(ns_inode(remote._holder.pid)):
        name = (cmdline(pid) or [""])[0]
        if name.startswith("sshd-session:") or name.startswith("sshd-auth:") or \
                (name.startswith("sshd: ") and "[listener]" not in name):
            out.append(pid)
    return out


def kill_ssh_sessions(remote) -> int:
    pids = ssh_sessions(remote)
    kill_pids(pids, signal.SIGKILL)
    return len(pids)


def registry_containers(remote) -> list[str]:
    return remote.docker("ps", "-aq", "--filter", "label=pussh.registry=1").stdout.split()


def wait_no_registry(remote, timeout: float = 90) -> None:
    """The registry container goes once its SSH session is gone (its keeper removes it)."""
    wait_until(lambda: not registry_containers(remote), timeout, "the registry container to be removed")


def tag_target(remote, image: str) -> str | None:
    return report(remote.containerd_socket_outside).images.get(full_name(image))


def check_whole(remote, image: str, allowed: dict[str, str]) -> str:
    """The tag points at one of `allowed` (root digest -> expected output), its image is complete in
    the store and a container of it prints what that version prints. Returns the digest."""
    rep = report(remote.containerd_socket_outside)
    assert rep.problems() == [], rep.problems()
    target = rep.images.get(full_name(image))
    assert target in allowed, f"{image} points at {target}, neither the old nor the new image {sorted(allowed)}"
    assert run_output(remote, image) == allowed[target]
    return target


def explain_sent(remote, blobs: dict[str, int], sent: list[str]) -> dict:
    """For an assertion message: each digest sent, its local size and the server's."""
    have = report(remote.containerd_socket_outside).content
    return {d: (blobs.get(d), have.get(d)) for d in set(sent) | set(blobs)}


def missing_blobs(remote, blobs: dict[str, int]) -> set[str]:
    have = report(remote.containerd_socket_outside).content
    return {d for d, size in blobs.items() if have.get(d) != size}


def no_upload_leftovers(remote) -> None:
    """Once the registry is gone and its upload leases expire (done here as expiry does: the leases
    are deleted, each having an expiry), GC leaves no ingest and no blob nothing references."""
    wait_no_registry(remote)
    assert expire_uploads(remote.containerd_socket_outside) == []
    rep = report(remote.containerd_socket_outside)
    assert rep.ingests == [], rep.ingests
    assert rep.upload_leftovers() == []
    assert rep.problems() == [], rep.problems()
    assert rep.unreferenced() == set()
