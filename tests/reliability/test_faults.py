"""Faults in the middle of a push, end to end on the real test bed: the SSH connection cut (its
server-side processes killed, or every packet dropped) at 10 %, 50 % and 99 % of a 64 MiB blob, the
server's registry container killed, its containerd and its dockerd restarted, pussh SIGKILLed.

Each test puts an old image on the server under a tag, then pushes a new one (same tag, a new
64 MiB last layer) and strikes when the wire says that share of the blob has crossed. After the
fault: the tag names the old image or the new one, complete and runnable, never a mix; pussh failed
with one line (or succeeded); the registry container goes; a re-run sends exactly the blobs the
server still lacks and completes; once the upload leases expire, GC leaves no ingest and no blob
nothing references."""
from __future__ import annotations

import pytest

from relhosts import (Wire, blobs_of, build_pair, check_whole, kill_ssh_sessions, missing_blobs,
                      no_upload_leftovers, one_line_error, push, registry_containers, run_output, start_push,
                      tag_target, wait_no_registry, wait_payload)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BIG_MB = 64
RATE = "200mbit"  # 25 MB/s: 64 MiB take ~2.7 s, so a 10 ms poll lands within 0.4 % of the mark


@pytest.fixture(scope="module")
def env(rel_env):
    local, remote = rel_env
    return local, remote, Wire(remote)


def _kill_registry(remote) -> None:
    ids = registry_containers(remote)
    assert len(ids) == 1, ids
    remote.docker("kill", ids[0])


FAULTS = {
    # name: (share of the big blob sent when it strikes, what it does)
    "ssh-killed-at-10pct": (0.10, lambda remote, p: kill_ssh_sessions(remote)),
    "ssh-killed-at-99pct": (0.99, lambda remote, p: kill_ssh_sessions(remote)),
    "traffic-dropped-at-50pct": (0.50, lambda remote, p: remote.block_traffic()),
    "traffic-blip-at-50pct": (0.50, None),  # dropped for 5 s, then back: the push goes on
    "registry-killed": (0.50, lambda remote, p: _kill_registry(remote)),
    "containerd-restarted": (0.50, lambda remote, p: remote.restart_containerd()),
    "dockerd-restarted": (0.50, lambda remote, p: remote.restart_dockerd()),
    "pussh-sigkilled": (0.50, lambda remote, p: p.proc.kill()),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_mid_push(env, fault):
    local, remote, wire = env
    share, strike = FAULTS[fault]
    old, new = build_pair(local, f"faults/{fault}", BIG_MB)
    tag = f"faults/{fault}:live"
    old_out, new_out = run_output(local, old), run_output(local, new)
    assert old_out != new_out

    # The old image on the server under the tag (the wire's overhead measured on the way).
    local.docker("tag", old, tag)
    wire.mark()
    first = push(local, remote, tag)
    wire.calibrate(first["bytes_sent"])
    old_root = check_whole(remote, tag, {first["digest"]: old_out})

    # The new image under the same tag, and the fault at `share` of its big blob.
    local.docker("tag", new, tag)
    blobs = blobs_of(local.containerd_socket, new)
    big = max(blobs.values())
    assert big > BIG_MB * (1 << 20)
    remote.shape(rate=RATE)
    blocked = False
    try:
        wire.mark()
        p = start_push(local, remote, tag)
        at = wait_payload(wire, p, share * big)
        print(f"{fault}: struck at {at / big:.1%} of the {big / (1 << 20):.0f} MiB blob")
        if strike is None:  # a blip: everything dropped for 5 s, then the link is back
            remote.block_traffic()
            blocked = True
            try:
                p.proc.wait(timeout=5)
            except Exception:
                pass
            remote.unblock_traffic()
            blocked = False
        else:
            blocked = fault.startswith("traffic")
            strike(remote, p)
        p.wait(timeout=400)
    finally:
        if blocked:
            remote.unblock_traffic()
        remote.unshape()

    # What the fault left: a clear failure or a finished push; the tag whole, old or new.
    if fault == "pussh-sigkilled":
        assert p.rc == -9
    elif p.rc != 0:
        error = one_line_error(p)
        print(f"{fault}: pussh said: {error}")
    if fault == "traffic-blip-at-50pct":
        assert p.rc == 0, (p.out, p.err)  # TCP rides out 5 s of loss
    wait_no_registry(remote)
    # Old or new, whole and runnable: anything but the old root must run as the new image (and the
    # re-run below proves it is the new root).
    now = tag_target(remote, tag)
    after = check_whole(remote, tag, {old_root: old_out} if now == old_root else {now: new_out})

    # A re-run sends exactly what the server still lacks, and completes.
    lacking = missing_blobs(remote, blobs)
    again = push(local, remote, tag)
    assert set(again["sent"]) == lacking, (sorted(again["sent"]), sorted(lacking))
    new_root = check_whole(remote, tag, {again["digest"]: new_out})
    assert after in (old_root, new_root)
    no_upload_leftovers(remote)

