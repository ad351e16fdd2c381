"""The exact sub-layer delta into a containerd-store server: a classic-store client's layers are
compressed by pussh (BlockGzip), which the server's helper redoes byte for byte from the rebuilt
tar. So the delta is on by default, the server ends up with the local blob itself and the local
manifest, not a blob of its own. Proved by the bytes on the server's veth, its content store (the
blob's digest is that of the file in the client's cache), its image record and a container's files."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from pussh_support import PYTHON, REPO_ROOT, pussh
from testbed.images import build_files_images

pytestmark = pytest.mark.e2e
MiB = 1 << 20
FILES, TOTAL_MB = 400, 20  # each variant rewrites 2 files and adds 2 (1 %)
CHANGED = 4 * (TOTAL_MB * MiB // FILES)


@pytest.fixture(scope="module")
def local(local_host_classic):
    build_files_images(local_host_classic, {f"xdl:v{v}": v for v in range(3)}, TOTAL_MB, FILES, seed="xdl")
    return local_host_classic


def push(local, remote, image, cache, *args):
    local.docker("tag", image, "xdl:app")
    tx0, _ = remote.link_bytes()
    r = pussh(local, "--json", "-v", "-F", remote.ssh_config, *args, "xdl:app", remote.alias,
              env={"PUSSH_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stdout + r.stderr
    return remote.link_bytes()[0] - tx0, json.loads(r.stdout)


def server_blobs(remote) -> dict[str, str]:
    """digest -> its labels, of the server's content store in Docker's namespace."""
    out = {}
    for line in remote.ctr("content", "ls", namespace="moby").stdout.splitlines()[1:]:
        digest, _, rest = line.partition("\t")
        out[digest] = rest
    return out


def cached_blobs(cache) -> set[str]:
    """The digests of the layer blobs the client's cache holds, hashed here."""
    return {"sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in (cache / "blobs" / "sha256").iterdir()}


def listing(host, image) -> str:
    return host.docker("run", "--rm", "--pull", "never", "--network", "none", image).stdout


def test_classic_client_delta_into_containerd_is_exact_by_default(local, remote_host, tmp_path):
    remote, cache = remote_host, tmp_path / "cache"
    _, first = push(local, remote, "xdl:v0", cache)
    assert first["delta"] == [] and first["via"] == "containerd", first

    sent, res = push(local, remote, "xdl:v1", cache)
    [d] = res["delta"]
    assert d["rebuilt"] and d["exact"] and d["stored_digest"] is None, res
    assert sent < 3 * CHANGED + 256 * 1024, f"{sent} bytes on the wire for {CHANGED} changed"
    # the server holds the very blob the client's cache made, and the manifest naming it
    assert d["digest"] in cached_blobs(cache)
    blobs = server_blobs(remote)
    assert d["digest"] in blobs and f"containerd.io/uncompressed={d['diff_id']}" in blobs[d["digest"]]
    target = remote.docker("image", "inspect", "--format", "{{.Id}}", "xdl:app").stdout.strip()
    assert target == res["digest"]
    manifest = json.loads(remote.ctr("content", "get", target, namespace="moby").stdout)
    assert d["digest"] in [layer["digest"] for layer in manifest["layers"]]
    assert remote.diff_ids("xdl:app") == local.diff_ids("xdl:v1")
    assert listing(remote, "xdl:app") == listing(local, "xdl:v1")

    # nothing changed since: nothing crosses but the probe's questions
    sent, again = push(local, remote, "xdl:v1", cache)
    assert again["sent"] == [] and again["delta"] == [] and sent < 256 * 1024, again

    # Once a container of it has run, Docker has the image unpacked: the base is read from the
    # snapshot's directory, with no inflated copy of the base blob in the helper's directory
    # (watched while a slow link holds the rebuild open)
    assert listing(remote, "xdl:app") == listing(local, "xdl:v1")
    local.docker("tag", "xdl:v2", "xdl:app")
    seen: set[str] = set()
    with remote.shaped(rate="2mbit"):
        proc = subprocess.Popen([PYTHON, "-m", "pussh", "-q", "--json", "-F", remote.ssh_config, "xdl:app",
                                 remote.alias], cwd=str(REPO_ROOT), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, **local.env, "PUSSH_CACHE_DIR": str(cache)})
        deadline = time.monotonic() + 120
        while not any(n.endswith(".partial") for n in seen):
            assert proc.poll() is None, "the push ended before its rebuild was seen: " + "".join(proc.communicate())
            assert time.monotonic() < deadline, "the delta never started rebuilding"
            seen |= set(remote.run("sh", "-c", "ls /var/lib/containerd/pussh-delta-*/ 2>/dev/null",
                                   check=False).stdout.split())
            time.sleep(0.05)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert not [n for n in seen if n.startswith("base-")], seen
    [d] = json.loads(out)["delta"]
    assert d["rebuilt"] and d["exact"], d
    assert listing(remote, "xdl:app") == listing(local, "xdl:v2")
