"""The one place the benchmarks touch the test bed (`testbed/`): hosts, shaping, link counters,
images, and the processes whose CPU is counted. If the test bed's API moves, only this file changes.

    bed = Bed(workdir)
    local = bed.local("containerd")                 # LocalHost, created on first use
    a = bed.remote("a", "containerd")               # RemoteHost, created on first use
    bed.shape([a], "200mbit", "10ms")               # one way delay: RTT 20 ms
    bed.link_bytes([a])                             # (tx, rx) summed over the remotes' veths
    bed.ssh_config                                  # one OpenSSH config file naming every remote
    bed.close()
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import testbed
from testbed import LocalHost, RemoteHost
from testbed._proc import ns_inode

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("PUSSH_BENCH_CACHE", "/var/cache/pussh-bench"))
REGISTRY_IMAGE = "pussh-registry:bench"
CRI_NAMESPACE = "k8s.io"  # where a Kubernetes node's containerd (store "none") keeps images
# what goes into the registry image (Dockerfile COPYs these): the cached image tar is keyed by them
REGISTRY_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "registry", "ctrd", "oci", "proto")
_CLIENT_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE", "SSH_AUTH_SOCK")


class BedError(RuntimeError):
    pass


class Bed:
    def __init__(self, workdir: Path, log=print) -> None:
        self.workdir = workdir
        self.log = log
        self._locals: dict[str, LocalHost] = {}
        self._remotes: dict[str, RemoteHost] = {}
        self.ssh_config = str(workdir / "ssh_config")
        Path(self.ssh_config).write_text("")

    # -- hosts ---------------------------------------------------------------------------------------
    def local(self, store: str = "containerd") -> LocalHost:
        if store not in self._locals:
            t0 = time.monotonic()
            self._locals[store] = LocalHost(store)  # type: ignore[arg-type]
            self.log(f"bed: local host ({store} store) up in {time.monotonic() - t0:.1f}s")
        return self._locals[store]

    def remote(self, key: str, store: str = "containerd") -> RemoteHost:
        if key not in self._remotes:
            t0 = time.monotonic()
            r = RemoteHost(store)  # type: ignore[arg-type]
            self._remotes[key] = r
            # one config file for every remote: OpenSSH and pussh each take a single -F
            with open(self.ssh_config, "a") as f:
                f.write(Path(r.ssh_config).read_text())
            self.log(f"bed: remote {key} ({store} store, {r.alias}) up in {time.monotonic() - t0:.1f}s")
        return self._remotes[key]

    def remotes(self) -> list[RemoteHost]:
        return list(self._remotes.values())

    def close(self) -> None:
        for r in reversed(list(self._remotes.values())):
            try:
                r.unshape()
            except Exception:
                pass
            r.stop()
        for loc in self._locals.values():
            loc.stop()
        self._remotes.clear()
        self._locals.clear()

    # -- environment -----------------------------------------------------------------------------------
    @staticmethod
    def local_env(local: LocalHost, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARS}
        env.update(local.env)
        env.update(extra)
        return env

    @staticmethod
    def alias(remote: RemoteHost) -> str:
        return remote.alias

    @staticmethod
    def store(host) -> str:
        return host.store

    @staticmethod
    def nsenter(remote: RemoteHost) -> list[str]:
        """argv prefix that runs a command inside the remote's namespaces (no ssh)."""
        return ["nsenter", "-t", str(remote.pid), "-m", "-n", "-u", "--"]

    @staticmethod
    def remote_env() -> dict[str, str]:
        return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                "LANG": "C.UTF-8"}

    @staticmethod
    def remote_dir(remote: RemoteHost) -> Path:
        """A directory of the remote's (seen alike from both sides), removed with the remote."""
        return Path(remote.dir)

    @staticmethod
    def netns_inode(remote: RemoteHost) -> int | None:
        return ns_inode(remote.pid)

    # -- shaping and counters --------------------------------------------------------------------------
    def shape(self, remotes: Iterable[RemoteHost], rate: str | None, delay: str | None) -> None:
        for r in remotes:
            if (rate, delay) == (None, None):
                r.unshape()
            else:
                r.shape(rate, delay)

    @staticmethod
    def link_bytes(remotes: Iterable[RemoteHost]) -> tuple[int, int]:
        tx = rx = 0
        for r in remotes:
            t, x = r.link_bytes()
            tx, rx = tx + t, rx + x
        return tx, rx

    @staticmethod
    def daemon_pids(host) -> dict[str, int]:
        """name -> pid of the host's long-lived daemons (containerd, dockerd, sshd)."""
        return {d.name: d.pid for d in getattr(host, "_daemons", []) if d.alive()}

    @staticmethod
    def delayer_pids(remote: RemoteHost) -> list[int]:
        """The user-space delay processes (NFQUEUE) of a shaped remote: shaping's own CPU cost."""
        return [d.pid for d in getattr(remote, "_delayers", []) if d.alive()]

    # -- images ----------------------------------------------------------------------------------------
    @staticmethod
    def build_images(local: LocalHost, names: dict[str, int], sizes_mb: Sequence[float], seed: str,
                     text_mb: float) -> None:
        """FROM-scratch busybox layer + one layer per size; names map to variants of the LAST layer."""
        testbed.build_test_images(local, names, sizes_mb, seed=seed, text_mb=text_mb)

    @staticmethod
    def build_files_images(local: LocalHost, names: dict[str, int], total_mb: float, files: int, seed: str,
                           changed: float) -> None:
        """S9's: one big layer of `files` files; names map to variants, each ~`changed` apart."""
        from testbed.images import build_files_images
        build_files_images(local, names, total_mb, files, seed=seed, changed=changed)

    def registry_image(self, local: LocalHost) -> str:
        """The repo's registry image on `local`: loaded from a tar cached by the hash of its sources,
        else built (debootstrap base + pip) and cached."""
        if local.has_image(REGISTRY_IMAGE):
            return REGISTRY_IMAGE
        tar = self.registry_tar()
        if tar.exists():
            local.docker("load", "-q", "-i", str(tar), timeout=600)
        else:
            t0 = time.monotonic()
            self.log("bed: building the registry image (debootstrap base + pip; once per source change)")
            testbed.build_registry_image(local, REGISTRY_IMAGE)
            CACHE.mkdir(parents=True, exist_ok=True)
            part = tar.with_suffix(".part")
            local.docker("save", "-o", str(part), REGISTRY_IMAGE, timeout=600)
            part.rename(tar)
            self.log(f"bed: registry image built in {time.monotonic() - t0:.0f}s, cached as {tar}")
        return REGISTRY_IMAGE

    @staticmethod
    def registry_tar() -> Path:
        h = hashlib.sha256()
        for name in REGISTRY_INPUTS:
            p = REPO / name
            files = sorted(x for x in p.rglob("*") if x.is_file() and "__pycache__" not in x.parts) if p.is_dir() else [p]
            for f in files:
                if f.exists():
                    h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
        return CACHE / f"registry-{h.hexdigest()[:16]}.tar"

    def install_registry_image(self, remote: RemoteHost) -> None:
        """Put the registry image on the server beforehand (as a server that pussh has pushed to before
        has it), so that no measured push includes sending it."""
        if remote.has_image(REGISTRY_IMAGE):
            return
        remote.docker("load", "-q", "-i", str(self.registry_tar()), timeout=600)

    @staticmethod
    def image_blobs(local: LocalHost, ref: str) -> dict | None:
        """Compressed blobs of the image for linux/amd64 from the local containerd store:
        {"index": n, "manifest": n, "config": n, "layers": [[digest, size], ...]}; None for a classic store."""
        if local.store != "containerd":
            return None
        from ctrd import Containerd
        from oci import reference as R

        async def read() -> dict:
            async with Containerd(local.containerd_socket, "moby") as c:
                img = await c.images.get(R.parse(ref).name)
                out: dict = {"index": 0}
                body = json.loads(await c.content.read_all(img.target.digest))
                size = img.target.size
                if "manifests" in body:
                    out["index"] = size
                    m = next(m for m in body["manifests"]
                             if m.get("platform", {}).get("architecture") == "amd64")
                    size = m["size"]
                    body = json.loads(await c.content.read_all(m["digest"]))
                out["manifest"] = size
                out["config"] = body["config"]["size"]
                out["layers"] = [[layer["digest"], layer["size"]] for layer in body["layers"]]
                return out
        return asyncio.run(read())

    # -- resetting a server ----------------------------------------------------------------------------
    @staticmethod
    def namespace(host) -> str:
        """The containerd namespace the host's images live in."""
        return CRI_NAMESPACE if host.store == "none" else "moby"

    def remove_images(self, remote: RemoteHost, keep: Sequence[str] = (REGISTRY_IMAGE,)) -> None:
        """Every image but `keep` off the server (content garbage-collected): a first push again."""
        if remote.store == "none":  # no Docker: the bench images in CRI's namespace, and their leases
            ns = CRI_NAMESPACE
            # CRI keeps more records per image (REPO@DIGEST, and the image ID sha256:CONFIG): every name
            # whose target is a bench image's goes
            rows = [ln.split() for ln in self.remote_run(remote, "ctr", "-n", ns, "images", "ls", check=False)
                    .stdout.decode().splitlines()[1:] if ln.strip()]
            targets = {r[2] for r in rows if len(r) > 2 and "bench/" in r[0]}
            ours = [r[0] for r in rows if len(r) > 2 and (r[2] in targets or "bench/" in r[0])]
            if ours:
                self.remote_run(remote, "ctr", "-n", ns, "images", "rm", "--sync", *ours, check=False)
            return
        out = remote.docker("image", "ls", "-a", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
        refs, ids = [], set()
        keep_ids = {remote.docker("image", "inspect", "--format", "{{.Id}}", k).stdout.strip() for k in keep
                    if remote.has_image(k)}
        for line in out.splitlines():
            ref, _, iid = line.partition(" ")
            if ref in keep:
                continue
            if ref.endswith("<none>"):
                ids.add(iid)
            else:
                refs.append(ref)
        if refs:
            remote.docker("rmi", "-f", *refs, check=False)
        ids -= {i[7:19] if i.startswith("sha256:") else i for i in keep_ids}
        if ids:
            remote.docker("rmi", "-f", *ids, check=False)
        if remote.store == "containerd":
            # pussh's registry holds what it received under leases for the upload expiry (pussh-upload-*,
            # pussh-hold-*, pussh-untagged): without removing them the next "first" push finds its blobs
            # still there. --sync: garbage-collect now.
            leases = self.remote_run(remote, "ctr", "-n", "moby", "leases", "ls", "-q", check=False).stdout.split()
            ours = [x.decode() for x in leases if x.startswith(b"pussh-")]
            if ours:
                self.remote_run(remote, "ctr", "-n", "moby", "leases", "rm", "--sync", *ours, check=False)

    def remote_run(self, remote: RemoteHost, *argv: str, check: bool = True, timeout: float = 120,
                   input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.nsenter(remote) + list(argv), env=self.remote_env(), capture_output=True,
                              check=check, timeout=timeout, input=input)

    def content_count(self, remote: RemoteHost) -> int | None:
        """Blobs in the server's containerd (namespace moby, or k8s.io on a node), to check that a reset
        emptied it."""
        if remote.store == "classic":
            return None
        cp = self.remote_run(remote, "ctr", "-n", self.namespace(remote), "content", "ls", "-q", check=False)
        return len(cp.stdout.split()) if cp.returncode == 0 else None

    def wait_gc(self, remote: RemoteHost, timeout: float = 10) -> int | None:
        """After images are removed, wait until the server's blob count stops dropping (containerd
        collects shortly after an image delete); returns the blobs left (the registry image's).
        Every lease is dropped first (synchronous GC): pussh's registry holds uploaded blobs under its
        upload leases until they expire (registry/storage.py), so without this a removed image's blobs
        stay and the next "first push" sends nothing."""
        if remote.store != "classic":
            ns = self.namespace(remote)
            cp = self.remote_run(remote, "ctr", "-n", ns, "leases", "ls", "-q", check=False)
            for lid in cp.stdout.decode().split():
                self.remote_run(remote, "ctr", "-n", ns, "leases", "rm", "--sync", lid, check=False)
        last, stable, deadline = None, 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.content_count(remote)
            if n is None:
                return None
            stable = stable + 1 if n == last else 0
            if stable >= 2:
                break
            last = n
            time.sleep(0.2)
        return last

    def runnable(self, remote: RemoteHost, image: str) -> dict:
        """On a node (store "none"), right after a push: is `image` unpacked (a committed snapshot for
        every layer's chain ID), and how long `ctr run --rm IMAGE ID /bin/sh -c 'exit 0'` takes from there
        (untimed for the push; the same for every method). Time until runnable = the push + any unpack still missing."""
        ns = CRI_NAMESPACE
        name = image if "." in image.split("/")[0] else f"docker.io/{image}"
        out: dict = {"name": name}
        ls = self.remote_run(remote, "ctr", "-n", ns, "images", "ls", check=False).stdout.decode().split("\n")
        out["listed"] = any(ln.split()[:1] == [name] for ln in ls)
        snaps = self.remote_run(remote, "ctr", "-n", ns, "snapshots", "ls", check=False).stdout.decode().splitlines()[1:]
        committed = {ln.split()[0] for ln in snaps if ln.split() and ln.split()[-1] == "Committed"}
        try:
            from ctrd.unpack import chain_ids
            diff_ids = self._diff_ids(remote, name)
            out["unpacked"] = bool(diff_ids) and set(chain_ids(diff_ids)) <= committed
        except Exception as e:  # noqa: BLE001
            out["unpacked"] = None
            out["unpack_error"] = str(e)[:200]
        t0 = time.monotonic()
        cp = self.remote_run(remote, "ctr", "-n", ns, "run", "--rm", name, "bench-runnable", "/bin/sh", "-c", "exit 0",
                             check=False, timeout=120, input=b"")
        out["run_seconds"] = round(time.monotonic() - t0, 3)
        out["run_ok"] = cp.returncode == 0
        if cp.returncode:
            out["run_error"] = (cp.stderr or cp.stdout).decode(errors="replace")[-300:]
        return out

    def _diff_ids(self, remote: RemoteHost, name: str) -> list[str]:
        """The image's diff IDs (config rootfs), read from the node's content store with ctr."""
        ns = CRI_NAMESPACE

        def get(digest: str) -> dict:
            return json.loads(self.remote_run(remote, "ctr", "-n", ns, "content", "get", digest).stdout)
        ls = self.remote_run(remote, "ctr", "-n", ns, "images", "ls").stdout.decode().splitlines()
        target = next(ln.split()[2] for ln in ls if ln.split()[:1] == [name])
        body = get(target)
        if "manifests" in body:
            m = next(m for m in body["manifests"] if m.get("platform", {}).get("architecture") == "amd64")
            body = get(m["digest"])
        return get(body["config"]["digest"])["rootfs"]["diff_ids"]

    def describe(self) -> dict:
        return {"locals": {k: repr(v) for k, v in self._locals.items()},
                "remotes": {k: {"alias": r.alias, "store": r.store, "address": r.address}
                            for k, r in self._remotes.items()}}

    @staticmethod
    def quote(argv: Sequence[str]) -> str:
        return shlex.join(argv)
