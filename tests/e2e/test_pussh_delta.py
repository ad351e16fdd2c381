"""Sub-layer delta against the real test bed: a layer of many files, changed in ~1 % of them, sent
as its difference from the layer the server's current image has. Proved by the server's world:
the bytes on its veth, its image ID and diffIDs (the local image's), a container of the pushed
image printing the md5sum of every file, its Docker temp directory and processes after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from pussh_support import PYTHON, REPO_ROOT, pussh
from testbed.images import build_files_images

pytestmark = pytest.mark.e2e
MiB = 1 << 20
FILES, TOTAL_MB = 400, 20  # ~51 KiB a file; each variant rewrites 2 files and adds 2 (1 %)
FILE_SIZE = TOTAL_MB * MiB // FILES
CHANGED = 4 * FILE_SIZE


@pytest.fixture(scope="module")
def local(local_host):
    build_files_images(local_host, {f"dlt:v{v}": v for v in range(4)}, TOTAL_MB, FILES, seed="dlt")
    build_files_images(local_host, {"dlt:other": 0}, TOTAL_MB, FILES, seed="other")  # shares no file
    return local_host


def push(local, remote, image, *args, check=True):
    local.docker("tag", image, "dlt:app")
    r = pussh(local, "--json", "-v", "-F", remote.ssh_config, *args, "dlt:app", remote.alias)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r, (json.loads(r.stdout) if r.stdout.startswith("{") else None)


def wire(remote, fn):
    tx0, _ = remote.link_bytes()
    out = fn()
    return remote.link_bytes()[0] - tx0, out


def files_listing(host, image) -> str:
    return host.docker("run", "--rm", "--pull", "never", "--network", "none", image).stdout


def leftovers(remote) -> list[str]:
    """The helper's temp directories (Docker's tmp, beside containerd's content store) and processes."""
    dirs = remote.run("sh", "-c", "ls -d /var/lib/docker/tmp/pussh-delta-* /var/lib/containerd/pussh-delta-* "
                      "2>/dev/null", check=False).stdout.split()
    return dirs + remote.run("python3", "-c", OWN_HELPERS).stdout.splitlines()


# The helper processes in the remote's own mount namespace (the bed shares the machine's PID
# namespace, and another bed's helpers are not this one's leftovers).
OWN_HELPERS = """
import os
me, mark = os.readlink("/proc/self/ns/mnt"), "pussh" + "-delta"
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if int(pid) != os.getpid() and os.readlink(f"/proc/{pid}/ns/mnt") == me:
            args = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
            if mark in args:
                print(pid, args[:80].replace("\\n", " "))
    except OSError:
        pass
"""


def start_push(local, remote, *args) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "pussh", "-q", "-F", remote.ssh_config, *args, "dlt:app", remote.alias],
                            cwd=str(REPO_ROOT), env={**os.environ, **local.env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_rebuild(remote, proc) -> None:
    """Until the helper is rebuilding a layer on the server (its partial file is there)."""
    deadline = time.monotonic() + 60
    while not remote.run("sh", "-c", "ls -d /var/lib/docker/tmp/pussh-delta-*/*.partial 2>/dev/null",
                         check=False).stdout:
        assert proc.poll() is None, "".join(proc.communicate())
        assert time.monotonic() < deadline, "the delta never started rebuilding"
        time.sleep(0.05)


def test_delta_to_classic_server_exact_fallback_interrupt_wrong_base(local, remote_host_classic):
    remote = remote_host_classic
    push(local, remote, "dlt:v0", "--no-delta")
    server_id = lambda: remote.docker("image", "inspect", "--format", "{{.Id}}", "dlt:app").stdout.strip()  # noqa: E731

    # 1. exact, on by default: the changed files cross (about), not the layer; the same image ID
    sent, (r, res) = wire(remote, lambda: push(local, remote, "dlt:v1"))
    [d] = res["delta"]
    assert d["rebuilt"] and d["exact"] and d["error"] is None, res
    assert sent < 3 * CHANGED + 256 * 1024, f"{sent} bytes on the wire for {CHANGED} changed"
    assert remote.diff_ids("dlt:app") == local.diff_ids("dlt:v1")
    v1_id = server_id()
    assert v1_id == res["sent"][0]  # the config: the image ID Docker made is the local image's
    assert files_listing(remote, "dlt:app") == files_listing(local, "dlt:v1")
    assert leftovers(remote) == []

    # 2. a corrupted chunk: a file of the server's base layer changes on its disk after the helper
    # listed it (the link slowed, so the rebuild waits for the changed files): the rebuilt tar misses
    # the diffID, the layer goes whole, and the push still makes the right image
    upper = remote.docker("image", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", "dlt:app").stdout.strip()
    victim = f"{upper}/deps/pkg003/f00399.bin"  # the last file of the layer, and one v2 does not rewrite
    flip = ["python3", "-c", "import sys; f = open(sys.argv[1], 'r+b'); b = f.read(1); f.seek(0); "
            "f.write(bytes([b[0] ^ 0xFF]))", victim]  # done twice: the file as it was
    local.docker("tag", "dlt:v2", "dlt:app")
    tx0, _ = remote.link_bytes()
    remote.shape(rate="512kbit")  # the rebuild waits seconds for the changed files
    try:
        proc = start_push(local, remote, "--json")
        wait_for_rebuild(remote, proc)
        remote.run(*flip)
        remote.unshape()
        out, err = proc.communicate(timeout=120)
    finally:
        remote.unshape()
        remote.run(*flip)
    sent = remote.link_bytes()[0] - tx0
    assert proc.returncode == 0, out + err
    res = json.loads(out)
    [d] = res["delta"]
    assert not d["rebuilt"] and d["error"], res
    assert sent > TOTAL_MB * MiB * 0.9  # the whole layer crossed
    assert remote.diff_ids("dlt:app") == local.diff_ids("dlt:v2")
    assert files_listing(remote, "dlt:app") == files_listing(local, "dlt:v2")
    v2_id = server_id()
    assert leftovers(remote) == []

    # 3. killed mid-delta: the old image whole, nothing half-stored, nothing left running
    images_before = set(remote.docker("image", "ls", "-aq", "--no-trunc").stdout.split())
    local.docker("tag", "dlt:v3", "dlt:app")
    with remote.shaped(rate="1mbit"):
        proc = start_push(local, remote, "--delta")
        try:
            wait_for_rebuild(remote, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
    deadline = time.monotonic() + 20
    while leftovers(remote):
        assert time.monotonic() < deadline, f"left on the server after the kill: {leftovers(remote)}"
        time.sleep(0.2)
    assert server_id() == v2_id
    assert set(remote.docker("image", "ls", "-aq", "--no-trunc").stdout.split()) == images_before
    assert files_listing(remote, "dlt:app") == files_listing(local, "dlt:v2")

    # ... and the next push makes it, by delta again
    r, res = push(local, remote, "dlt:v3")
    assert [d["rebuilt"] for d in res["delta"]] == [True]
    assert files_listing(remote, "dlt:app") == files_listing(local, "dlt:v3")
    assert v1_id != v2_id != server_id()

    # 4. a wrong base (the tag now names an unrelated image): the delta gives up, the layer goes whole
    r, res = push(local, remote, "dlt:other", "--delta")
    [d] = res["delta"]
    assert not d["rebuilt"] and d["error"] and d["shared"] == 0, res
    assert remote.diff_ids("dlt:app") == local.diff_ids("dlt:other")
    assert files_listing(remote, "dlt:app") == files_listing(local, "dlt:other")
    assert leftovers(remote) == []


def test_delta_to_containerd_server_opt_in(local, remote_host):
    remote = remote_host
    push(local, remote, "dlt:v0")
    # by default none: the server would store a blob of its own, so the manifest digest would change
    sent, (r, res) = wire(remote, lambda: push(local, remote, "dlt:v1"))
    assert res["delta"] == [] and sent > TOTAL_MB * MiB * 0.9, res

    sent, (r, res) = wire(remote, lambda: push(local, remote, "dlt:v2", "--delta"))
    [d] = res["delta"]
    assert d["rebuilt"] and not d["exact"] and d["stored_digest"], res
    assert sent < 3 * CHANGED + 256 * 1024, f"{sent} bytes on the wire for {CHANGED} changed"
    target = remote.docker("image", "inspect", "--format", "{{.Id}}", "dlt:app").stdout.strip()
    assert target == res["digest"] != local.docker("image", "inspect", "--format", "{{.Id}}", "dlt:v2").stdout.strip()
    assert remote.diff_ids("dlt:app") == local.diff_ids("dlt:v2")
    assert files_listing(remote, "dlt:app") == files_listing(local, "dlt:v2")
    # the rebuilt blob is in Docker's namespace with its diffID, as a pulled layer would be
    [line] = [l for l in remote.ctr("content", "ls", namespace="moby").stdout.splitlines()
              if l.startswith(d["stored_digest"])]
    assert f"containerd.io/uncompressed={d['diff_id']}" in line
    assert leftovers(remote) == []
