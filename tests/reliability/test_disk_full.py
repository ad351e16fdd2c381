"""A server whose disk is (nearly) full: containerd's root is a small tmpfs inside the remote's mount
namespace. A push that cannot fit is refused before sending anything; one that runs out of space
half-way (the space taken while the blob is on the wire) fails with a clear error. Either way the old
image under the tag is whole, nothing half-written survives the upload leases, and once space is
free again a re-run completes, sending exactly the missing blobs. Both paths (`--via registry`,
`--via containerd`); what crossed is measured on the server's veth, not taken from pussh's report."""
from __future__ import annotations

import pytest

from relhosts import (Wire, WireCost, blobs_of, explain_sent, build_pair, check_whole, missing_blobs,
                      no_upload_leftovers, one_line_error, push, run_output, start_push, to_send, via_of, wait_no_registry,
                      wait_payload)
from relsupport import gc, record, report

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = "/var/lib/containerd"
FILLER = f"{ROOT}/filler"
TMPFS = "700m"  # the registry image (~300 MB content and snapshot) and the test images fit
VIAS = ("registry", "containerd")
NOTHING = 256 << 10  # bytes on the wire for a push refused before sending (a blob here is 64 MiB)


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
    """Take all but `left` bytes of the tmpfs (one more file each time: tmpfs has no fragmentation).
    A push writing meanwhile can take the space between df and fallocate (ENOSPC): measure again."""
    for _ in range(50):
        n = free(remote) - left
        if n <= 0:
            return
        if remote.run("sh", "-c", f"fallocate -l {n} {FILLER}.$(date +%s%N)", check=False).returncode == 0:
            return
    raise AssertionError(f"could not fill the disk to {left} bytes free (now {free(remote)})")


def unfill(remote) -> None:
    remote.run("sh", "-c", f"rm -f {FILLER}.*")


def setup_old(local, remote, name: str, via: str):
    """The old image on the server under the tag, the wire's cost measured on the way."""
    old, new = build_pair(local, name, 64)
    tag = f"{name}:live"
    local.docker("tag", old, tag)
    cost = WireCost(remote)
    first, full = cost.measure(lambda: push(local, remote, tag, "--via", via))
    via_of(first, via)
    _, noop = cost.measure(lambda: push(local, remote, tag, "--via", via))
    cost.calibrate(full, first["bytes_sent"], noop)
    old_out, new_out = run_output(local, old), run_output(local, new)
    check_whole(remote, tag, {first["digest"]: old_out})
    local.docker("tag", new, tag)
    return tag, first["digest"], old_out, new_out, blobs_of(local.containerd_socket, new), cost


def rerun(local, remote, tag: str, via: str, blobs: dict[str, int], cost: WireCost, new_out: str) -> dict:
    """Once space is free: the re-run sends exactly the missing blobs (report and wire) and completes."""
    lacking = missing_blobs(remote, blobs)
    lacking_bytes = to_send(remote, blobs, lacking)
    again, wire = cost.measure(lambda: push(local, remote, tag, "--via", via))
    assert set(again["sent"]) == lacking, explain_sent(remote, blobs, again["sent"])
    cost.check(wire, lacking_bytes, "the re-run")
    check_whole(remote, tag, {again["digest"]: new_out})
    return {"lacking_blobs": len(lacking), "lacking_bytes": lacking_bytes, "wire_bytes": wire,
            "bounds": [round(x) for x in cost.bounds(lacking_bytes)]}


def drop(remote, tag: str) -> None:
    """The tmpfs is small: the test's image goes once the test is done."""
    remote.docker("rmi", "-f", tag)
    remote.docker("image", "prune", "-f")  # the images the tag named before (Docker keeps them dangling)
    gc(remote.containerd_socket_outside)


@pytest.mark.parametrize("via", VIAS)
def test_push_that_cannot_fit_is_refused_before_sending(small_disk, via):
    local, remote = small_disk
    tag, old_root, old_out, new_out, blobs, cost = setup_old(local, remote, f"disk/refused-{via}", via)
    fill_to(remote, 20 << 20)  # 20 MiB left, 64 MiB to send
    try:
        p, wire = cost.measure(lambda: start_push(local, remote, tag, "--via", via).wait())
        error = one_line_error(p)
        assert "disk is full" in error, error
        assert p.result()["bytes_sent"] == 0
        # nothing sent, on the wire: less than the SSH session and its commands cost at most
        assert wire <= NOTHING, f"{wire} bytes crossed for a push refused before sending"
        wait_no_registry(remote)
        check_whole(remote, tag, {old_root: old_out})
        assert report(remote.containerd_socket_outside).ingests == []
    finally:
        unfill(remote)
    record(via=via, rc=p.rc, error=error, refused_wire_bytes=wire, tag="old")
    no_upload_leftovers(remote)
    record(rerun=rerun(local, remote, tag, via, blobs, cost, new_out))
    drop(remote, tag)


@pytest.mark.parametrize("via", VIAS)
def test_disk_filling_up_mid_upload(small_disk, via):
    """The pre-check passes; at 30 % of the 64 MiB blob something else takes the space left."""
    local, remote = small_disk
    tag, old_root, old_out, new_out, blobs, cost = setup_old(local, remote, f"disk/midway-{via}", via)
    big = max(blobs.values())
    wire = Wire(remote)
    remote.shape(rate="200mbit")
    try:
        wire.mark()
        p = start_push(local, remote, tag, "--via", via)
        at = wait_payload(wire, p, 0.3 * big)
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
    record(via=via, struck_at=round(at / big, 4), rc=p.rc, error=error, tag="old")
    assert max(blobs, key=blobs.get) in missing_blobs(remote, blobs)  # not committed half-written
    no_upload_leftovers(remote)  # (which collects the small blobs no manifest claimed)
    record(rerun=rerun(local, remote, tag, via, blobs, cost, new_out))
    no_upload_leftovers(remote)
    drop(remote, tag)
