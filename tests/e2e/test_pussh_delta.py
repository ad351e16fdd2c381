"""Sub-layer delta against the real test bed: a layer of many files, changed in ~1 % of them, sent
as its difference from the layer the server's current image has. Proved by the server's world:
the bytes on its veth, its image ID and diffIDs (the local image's), a container of the pushed
image printing the md5sum of every file, its Docker temp directory and processes after a kill."""
from __future__ import annotations

import json
import os
import posixpath
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


def collect_garbage(remote) -> None:
    """containerd's garbage collection on the server, done now: what earlier tests left
    unreferenced goes before a test takes its picture of the content store, not during its checks."""
    lease = f"pussh-test-gc-{os.getpid()}"
    remote.ctr("leases", "create", "--id", lease, namespace="moby")
    remote.ctr("leases", "rm", "--sync", lease, namespace="moby")


# The command lines of the processes in the remote's network namespace (its sshd's children: the
# helper among them) that name the helper's temp prefix. The remote shares this machine's PID
# namespace, so a plain `ps` there sees every process here (another suite's, too).
_HELPER_PROCS = """
import os
me, needle = os.readlink("/proc/self/ns/net"), b"pussh-" + b"delta"
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if int(pid) != os.getpid() and os.readlink(f"/proc/{pid}/ns/net") == me:
            args = open(f"/proc/{pid}/cmdline", "rb").read()
            if needle in args:
                print(pid, b" ".join(args[:200].replace(b"\\0", b" ").split()).decode(errors="replace"))
    except OSError:
        pass
"""


def leftovers(remote) -> list[str]:
    """The helper's temp directories (Docker's tmp, beside containerd's content store) and processes."""
    dirs = remote.run("sh", "-c", "ls -d /var/lib/docker/tmp/pussh-delta-* /var/lib/containerd/pussh-delta-* "
                      "2>/dev/null", check=False).stdout.split()
    procs = remote.run("python3", "-c", _HELPER_PROCS).stdout.splitlines()
    return dirs + [p for p in procs if p.strip()]


def start_push(local, remote, *args) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "pussh", "-q", "-F", remote.ssh_config, *args, "dlt:app", remote.alias],
                            cwd=str(REPO_ROOT), env={**os.environ, **local.env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_rebuild(remote, proc, tmp_glob: str = "/var/lib/docker/tmp/pussh-delta-*") -> None:
    """Until the helper is rebuilding a layer on the server (its partial file is in its temp
    directory, `tmp_glob`: Docker's tmp for a classic store, beside containerd's content store for
    the direct path)."""
    deadline = time.monotonic() + 60
    while not remote.run("sh", "-c", f"ls -d {tmp_glob}/*.partial 2>/dev/null", check=False).stdout:
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


def test_delta_to_containerd_server_interrupted(local, remote_host):
    """Killed mid-rebuild on the direct path: the server's old image whole, no blob or ingest of
    the push's in containerd, nothing left running; the next push makes it, by delta."""
    remote = remote_host
    blobs_dir = f"{remote.content_root}/blobs/sha256"
    server_id = lambda: remote.docker("image", "inspect", "--format", "{{.Id}}", "dlt:app").stdout.strip()  # noqa: E731
    images = lambda: set(remote.docker("image", "ls", "-aq", "--no-trunc").stdout.split())  # noqa: E731
    content = lambda: {line.split()[0] for line in  # noqa: E731
                       remote.ctr("content", "ls", "-q", namespace="moby").stdout.splitlines() if line.strip()}
    on_disk = lambda: set(remote.run("ls", "-A", blobs_dir).stdout.split())  # noqa: E731
    ingests = lambda: [line for line in  # noqa: E731  (ctr's header line: REF SIZE AGE)
                       remote.ctr("content", "active", namespace="moby").stdout.splitlines()
                       if line.strip() and not line.startswith("REF")]

    # 1. a known base, whatever the shared server held: v0, sent plainly
    r, res = push(local, remote, "dlt:v0", "--no-delta")
    assert res["delta"] == [], res
    assert remote.diff_ids("dlt:app") == local.diff_ids("dlt:v0")
    collect_garbage(remote)  # (what the shared server held before goes now, not during the checks)
    v0_id, images_before, content_before, disk_before = server_id(), images(), content(), on_disk()
    v0_files = files_listing(local, "dlt:v0")
    assert files_listing(remote, "dlt:app") == v0_files

    # 2. v3 by delta, the link slow, the client killed while the helper rebuilds the layer
    local.docker("tag", "dlt:v3", "dlt:app")
    helper_tmp = f"{posixpath.dirname(remote.content_root)}/pussh-delta-*"
    with remote.shaped(rate="1mbit"):
        proc = start_push(local, remote, "--delta")
        try:
            wait_for_rebuild(remote, proc, helper_tmp)
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, \
        f"the push ended (rc={proc.returncode}) before the kill: nothing was interrupted\n{out}{err}"

    # 3. the helper gone with its directory; nothing of the push stored, nothing half-written
    deadline = time.monotonic() + 20
    while leftovers(remote):
        assert time.monotonic() < deadline, f"left on the server after the kill: {leftovers(remote)}"
        time.sleep(0.2)
    assert server_id() == v0_id
    assert images() == images_before
    content_after, disk_after = content(), on_disk()
    assert content_after - content_before == set(), "containerd took blobs from the killed push"
    assert disk_after - disk_before == set(), f"new files in {blobs_dir} after the kill"
    assert not [n for n in disk_after if n.endswith(".pussh-partial")], disk_after
    assert not [i for i in ingests() if "pussh" in i], ingests()
    assert files_listing(remote, "dlt:app") == v0_files

    # 4. the next push makes it, by delta again: the server's own gzip of the rebuilt layer
    r, res = push(local, remote, "dlt:v3", "--delta")
    [d] = res["delta"]
    assert d["rebuilt"] and d["error"] is None and d["stored_digest"], res
    # (the check of step 3 could have seen it: the server did not have this blob before)
    assert d["stored_digest"] not in content_before | {f"sha256:{n}" for n in disk_before}, res
    assert d["stored_digest"] in content()
    assert server_id() == res["digest"] != v0_id
    assert remote.diff_ids("dlt:app") == local.diff_ids("dlt:v3")
    assert files_listing(remote, "dlt:app") == files_listing(local, "dlt:v3")
    assert not [i for i in ingests() if "pussh" in i], ingests()
    assert leftovers(remote) == []
