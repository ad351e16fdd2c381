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


def block_drops(remote) -> int:
    """Packets the link block's DROP rules (testbed `block_traffic`) have dropped so far: the proof that
    a "traffic dropped" fault struck (read before unblocking: the rules and their counters go then)."""
    out = remote.run("iptables", "-w", "-L", "-v", "-x", "-n").stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if f"{remote.netns}-block" in line)


def daemon_pid(remote, name: str) -> int:
    """The PID of the test bed's running daemon `name` (containerd, dockerd) on the remote."""
    d = remote._daemon(name)
    assert d is not None and d.alive(), f"{name} is not running on {remote!r}"
    return d.pid


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


class WireCost:
    """What a push costs on the server's veth (bytes from here to the server, SSH and TCP framing
    included): `fixed` for a push that sends no blob, `per_byte` for each payload byte. Measured on a
    complete push and on a push that has nothing to send; `expect` then bounds what a later push of
    `payload` bytes may put on the wire, so "it sent exactly the missing blobs" and "0 bytes sent" are
    checked on the wire, not on pussh's own report."""

    SLACK = 384 << 10  # bytes: a push that starts a registry costs more than a no-op one (~50 KB)
    SHARE = 0.02  # and the framing varies a little with segment sizes

    def __init__(self, remote) -> None:
        self.remote, self.fixed, self.per_byte = remote, 0.0, 1.0

    def tx(self) -> int:
        return self.remote.link_bytes()[0]

    def measure(self, fn):
        """(fn(), bytes it put on the wire towards the server)."""
        t0 = self.tx()
        out = fn()
        return out, self.tx() - t0

    def calibrate(self, full_wire: int, full_payload: int, noop_wire: int) -> None:
        self.fixed = float(noop_wire)
        self.per_byte = max((full_wire - noop_wire) / max(full_payload, 1), 1.0)

    def bounds(self, payload: int) -> tuple[float, float]:
        want = self.fixed + self.per_byte * payload
        return payload, want * (1 + self.SHARE) + self.SLACK

    def check(self, wire: int, payload: int, what: str) -> None:
        lo, hi = self.bounds(payload)
        assert lo <= wire <= hi, (f"{what}: {wire} bytes on the wire, but {payload} bytes of missing blobs "
                                  f"allow only {lo:.0f}..{hi:.0f} (fixed {self.fixed:.0f}, x{self.per_byte:.4f})")

    def as_dict(self) -> dict:
        return {"fixed": round(self.fixed), "per_byte": round(self.per_byte, 4)}


def explain_sent(remote, blobs: dict[str, int], sent: list[str]) -> dict:
    """For an assertion message: each digest sent, its local size and the server's."""
    have = report(remote.containerd_socket_outside).content
    return {d: (blobs.get(d), have.get(d)) for d in set(sent) | set(blobs)}


def resumable(remote, blobs: dict[str, int]) -> dict[str, int]:
    """Digest -> bytes the server's containerd already holds of it in an ingest a re-run resumes
    (the direct path's ingest ref is pussh-<hex>; the registry path starts each upload afresh)."""
    async def read() -> dict[str, int]:
        async with Containerd(remote.containerd_socket_outside, "moby") as c:
            st = {s.ref: s.offset for s in await c.content.list_statuses()}
        return {d: st[f"pussh-{d.split(':', 1)[1]}"] for d in blobs if f"pussh-{d.split(':', 1)[1]}" in st}
    return asyncio.run(read())


def to_send(remote, blobs: dict[str, int], lacking: set[str]) -> int:
    """Bytes a re-run has to send: each lacking blob, less what a resumable ingest has of it."""
    have = resumable(remote, blobs)
    return sum(blobs[d] - have.get(d, 0) for d in lacking)


def missing_blobs(remote, blobs: dict[str, int]) -> set[str]:
    have = report(remote.containerd_socket_outside).content
    return {d for d, size in blobs.items() if have.get(d) != size}


def via_of(res: dict, via: str) -> None:
    assert res.get("via") == via, f"asked for --via {via}, pussh took {res.get('via')!r}: {res}"


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
