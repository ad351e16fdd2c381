"""Concurrent pushes to one server, on both paths (`--via registry`, `--via containerd`): two
different images to the same tag at once (one wins, whole), and ten pushes of images that share
layers (all succeed, all whole; what crossed the server's veth is what the pushes say they sent)."""
from __future__ import annotations

import pytest

from relhosts import (WireCost, blobs_of, check_whole, missing_blobs, no_upload_leftovers, push, registry_containers, run_output,
                      start_push, via_of)
from relsupport import record
from testbed import build_test_images

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
VIAS = ("registry", "containerd")
TOLERANCE = 0.25  # wire vs report, in multiples of the shared layers' size (~4 MiB)


@pytest.mark.parametrize("via", VIAS)
def test_two_images_to_one_tag_at_once(rel_env, make_local, via):
    """Two machines push different images under the same name to one server at the same moment,
    three rounds: both pushes succeed, and the tag names one of the two images, whole and runnable."""
    (a_host, remote), b_host = rel_env, make_local()
    tag = f"race-{via}/app:1"
    winners = []
    for rnd in range(3):
        # Same seed: the lower layers are identical on both machines (both upload them at once);
        # the last layer differs between the two and from round to round.
        build_test_images(a_host, {tag: 2 * rnd + 1}, [4, 4], seed="race", text_mb=0.25)
        build_test_images(b_host, {tag: 2 * rnd + 2}, [4, 4], seed="race", text_mb=0.25)
        outs = {"a": run_output(a_host, tag), "b": run_output(b_host, tag)}
        assert outs["a"] != outs["b"]
        pa, pb = start_push(a_host, remote, tag, "--via", via), start_push(b_host, remote, tag, "--via", via)
        ra, rb = pa.wait().result(), pb.wait().result()
        assert pa.rc == 0 and ra["ok"], (pa.out, pa.err)
        assert pb.rc == 0 and rb["ok"], (pb.out, pb.err)
        via_of(ra, via), via_of(rb, via)
        assert ra["digest"] != rb["digest"]
        won = check_whole(remote, tag, {ra["digest"]: outs["a"], rb["digest"]: outs["b"]})
        winners.append("a" if won == ra["digest"] else "b")
    print(f"winners by round: {winners}")
    record(via=via, rounds=3, both_succeeded=3, winners=winners)
    assert registry_containers(remote) == []
    no_upload_leftovers(remote)


@pytest.mark.parametrize("via", VIAS)
def test_ten_pushes_sharing_layers(rel_env, via):
    """Ten images sharing their base layers (busybox and 16 MiB), each with its own last layer,
    pushed by ten pussh processes at once: all succeed, all are whole and runnable. Concurrent pushes
    do not coordinate: each sends the shared layers if they were missing when it asked (HEAD), so how
    often they cross depends on timing (1 to 10 times; the run's figure is recorded). What is asserted:
    each push sends each blob at most once, and the bytes on the server's veth agree with what the
    pushes report having sent (their own layers once each, the shared ones `reported` times)."""
    local, remote = rel_env
    names = {f"ten-{via}/app{i}:1": i + 1 for i in range(10)}
    build_test_images(local, names, [16, 1], seed=f"ten-{via}", text_mb=0.25)
    want = {n: run_output(local, n) for n in names}
    assert len(set(want.values())) == 10
    blobs = {n: blobs_of(local.containerd_socket, n) for n in names}
    sizes = {d: s for b in blobs.values() for d, s in b.items()}
    lacking = missing_blobs(remote, sizes)  # (busybox's layer is there from earlier pushes)
    shared = set.intersection(*(set(b) for b in blobs.values())) & lacking
    shared_bytes = sum(sizes[d] for d in shared)
    own_bytes = sum(s for d, s in sizes.items() if d not in shared and d in lacking)
    assert shared_bytes > 16 << 20, (shared_bytes, shared)

    # The wire's cost per payload byte and per push, from one push of an image of the same shape.
    cost = WireCost(remote)
    build_test_images(local, {f"ten-{via}/probe:1": 99}, [16, 1], seed=f"ten-{via}-probe", text_mb=0.25)
    probe, full = cost.measure(lambda: push(local, remote, f"ten-{via}/probe:1", "--via", via))
    _, noop = cost.measure(lambda: push(local, remote, f"ten-{via}/probe:1", "--via", via))
    cost.calibrate(full, probe["bytes_sent"], noop)

    t0 = cost.tx()
    pushes = {n: start_push(local, remote, n, "--via", via) for n in names}
    results = {n: p.wait(timeout=900).result() for n, p in pushes.items()}
    wire = cost.tx() - t0
    failed = {n: (p.rc, r.get("error")) for (n, p), r in zip(pushes.items(), results.values()) if p.rc != 0 or not r["ok"]}
    assert failed == {}, failed
    for n, r in results.items():
        via_of(r, via)
        check_whole(remote, n, {r["digest"]: want[n]})
    # The shared layers went over the wire about once, not ten times: what the wire carried beyond
    # the ten pushes' fixed cost and their own layers, in multiples of the shared layers' size.
    sent = [d for r in results.values() for d in r["sent"]]
    crossings = (wire - 10 * cost.fixed - cost.per_byte * own_bytes) / (cost.per_byte * shared_bytes)
    reported = sum(sizes[d] for d in sent if d in shared) / shared_bytes
    print(f"{via}: {wire} bytes on the wire for 10 images; the shared layers ({shared_bytes} bytes) crossed "
          f"{crossings:.2f} times (pussh reports {reported:.2f})")
    record(via=via, pushes=10, succeeded=10, wire_bytes=wire, shared_bytes=shared_bytes, own_bytes=own_bytes,
           shared_crossings=round(crossings, 2), reported_crossings=round(reported, 2), wire_cost=cost.as_dict())
    assert all(len(r["sent"]) == len(set(r["sent"])) for r in results.values()), "a push sent a blob twice"
    assert 0.999 <= reported <= 10, reported  # each missing shared blob sent at least once, at most once a push
    assert abs(crossings - reported) <= TOLERANCE, f"the wire says {crossings:.2f} crossings, pussh {reported:.2f}"
    assert registry_containers(remote) == []
    no_upload_leftovers(remote)
