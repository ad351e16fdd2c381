"""A server whose disk is (nearly) full: containerd's root is a small tmpfs inside the remote's mount
namespace. A push that cannot fit is refused before sending anything; one that runs out of space
half-way (the space taken while the blob is on the wire) fails with a clear error. Either way the old
image under the tag is whole, nothing half-written survives the upload leases, and once space is
free again a re-run completes."""
from __future__ import annotations

import pytest

from relhosts import (Wire, blobs_of, explain_sent, build_pair, check_whole, missing_blobs, no_upload_leftovers, one_line_error,
                      push, run_output, start_push, wait_no_registry, wait_payload)
from relsupport import report

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = "/var/lib/containerd"
FILLER = f"{ROOT}/filler"
TMPFS = "700m"  # the registry image (~300 MB content and snapshot) and the test images fit


@pytest.fixture(scope="module")
def small_disk(rel_local):
    """A server whose containerd root is a 700 MB tmpfs (daemons stopped, mounted, started again)."""
    from conftest import _start
    from testbed import RemoteHost
    remote = _start(lambda: RemoteHost("containerd"), "remote host (small disk)")
    try:
        yield rel_local, _shrink(remote)
    finally:
        remote.stop()


def _shrink(remote):
    for name in ("dockerd", "containerd"):
        d = remote._daemon(name)
        d.stop(timeout=30)
        remote._daemons.remove(d)
    remote.run("mount", "-t", "tmpfs", "-o", f"size={TMPFS}", "tmpfs", ROOT)
    remote._wait(remote._start_containerd(), remote._containerd_ready, 30, "containerd socket")
    remote._wait(remote._start_dockerd(), remote._dockerd_ready, 60, "dockerd /_ping")
    assert "tmpfs" in remote.run("stat", "-f", "-c", "%T", ROOT).stdout
    return remote


def free(remote) -> int:
    return int(remote.run("df", "-B1", "--output=avail", ROOT).stdout.split()[-1])


def fill_to(remote, left: int) -> None:
    """Take all but `left` bytes of the tmpfs (one more file each time: tmpfs has no fragmentation)."""
    n = free(remote) - left
    if n > 0:
        remote.run("sh", "-c", f"fallocate -l {n} {FILLER}.$(date +%s%N)")


def unfill(remote) -> None:
    remote.run("sh", "-c", f"rm -f {FILLER}.*")


def setup_old(local, remote, name: str):
    old, new = build_pair(local, name, 64)
    tag = f"{name}:live"
    local.docker("tag", old, tag)
    first = push(local, remote, tag)
    old_out, new_out = run_output(local, old), run_output(local, new)
    check_whole(remote, tag, {first["digest"]: old_out})
    local.docker("tag", new, tag)
    return tag, first["digest"], old_out, new_out, blobs_of(local.containerd_socket, new)


def test_push_that_cannot_fit_is_refused_before_sending(small_disk):
    local, remote = small_disk
    tag, old_root, old_out, new_out, blobs = setup_old(local, remote, "disk/refused")
    fill_to(remote, 20 << 20)  # 20 MiB left, 64 MiB to send
    try:
        p = start_push(local, remote, tag).wait()
        error = one_line_error(p)
        assert "disk is full" in error, error
        assert p.result()["bytes_sent"] == 0
        wait_no_registry(remote)
        check_whole(remote, tag, {old_root: old_out})
        assert report(remote.containerd_socket_outside).ingests == []
    finally:
        unfill(remote)
    no_upload_leftovers(remote)
    lacking = missing_blobs(remote, blobs)
    again = push(local, remote, tag)
    assert set(again["sent"]) == lacking, explain_sent(remote, blobs, again["sent"])
    check_whole(remote, tag, {again["digest"]: new_out})


def test_disk_filling_up_mid_upload(small_disk):
    """The pre-check passes; at 30 % of the 64 MiB blob something else takes the space left."""
    local, remote = small_disk
    tag, old_root, old_out, new_out, blobs = setup_old(local, remote, "disk/midway")
    big = max(blobs.values())
    wire = Wire(remote)
    remote.shape(rate="200mbit")
    try:
        wire.mark()
        p = start_push(local, remote, tag)
        wait_payload(wire, p, 0.3 * big)
        fill_to(remote, 256 << 10)  # 256 KiB left
        p.wait(timeout=400)
        error = one_line_error(p)
        print(f"pussh said: {error}")
        assert "disk is full" in error, error
        wait_no_registry(remote)
        check_whole(remote, tag, {old_root: old_out})
    finally:
        remote.unshape()
        unfill(remote)
    assert max(blobs, key=blobs.get) in missing_blobs(remote, blobs)  # not committed half-written
    no_upload_leftovers(remote)  # (which collects the small blobs no manifest claimed)
    lacking = missing_blobs(remote, blobs)
    again = push(local, remote, tag)
    assert set(again["sent"]) == lacking, explain_sent(remote, blobs, again["sent"])
    check_whole(remote, tag, {again["digest"]: new_out})
    no_upload_leftovers(remote)
