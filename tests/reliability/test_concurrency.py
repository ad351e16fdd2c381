"""Concurrent pushes to one server: two different images to the same tag at once (one wins, whole),
and ten pushes of images that share layers (all succeed, all whole)."""
from __future__ import annotations

import pytest

from relhosts import blobs_of, check_whole, no_upload_leftovers, push, registry_containers, run_output, start_push
from testbed import build_test_images

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_two_images_to_one_tag_at_once(rel_env, make_local):
    """Two machines push different images under the same name to one server at the same moment,
    three rounds: both pushes succeed, and the tag names one of the two images, whole and runnable."""
    (a_host, remote), b_host = rel_env, make_local()
    tag = "race/app:1"
    winners = []
    for rnd in range(3):
        # Same seed: the lower layers are identical on both machines (both upload them at once);
        # the last layer differs between the two and from round to round.
        build_test_images(a_host, {tag: 2 * rnd + 1}, [4, 4], seed="race", text_mb=0.25)
        build_test_images(b_host, {tag: 2 * rnd + 2}, [4, 4], seed="race", text_mb=0.25)
        outs = {"a": run_output(a_host, tag), "b": run_output(b_host, tag)}
        assert outs["a"] != outs["b"]
        pa, pb = start_push(a_host, remote, tag), start_push(b_host, remote, tag)
        ra, rb = pa.wait().result(), pb.wait().result()
        assert pa.rc == 0 and ra["ok"], (pa.out, pa.err)
        assert pb.rc == 0 and rb["ok"], (pb.out, pb.err)
        assert ra["digest"] != rb["digest"]
        won = check_whole(remote, tag, {ra["digest"]: outs["a"], rb["digest"]: outs["b"]})
        winners.append("a" if won == ra["digest"] else "b")
    print(f"winners by round: {winners}")
    assert registry_containers(remote) == []
    no_upload_leftovers(remote)


def test_ten_pushes_sharing_layers(rel_env):
    """Ten images sharing their base layers (busybox and 16 MiB), each with its own last layer,
    pushed by ten pussh processes at once: all succeed and all are whole and runnable."""
    local, remote = rel_env
    names = {f"ten/app{i}:1": i + 1 for i in range(10)}
    build_test_images(local, names, [16, 1], seed="ten", text_mb=0.25)
    want = {n: run_output(local, n) for n in names}
    assert len(set(want.values())) == 10
    pushes = {n: start_push(local, remote, n) for n in names}
    results = {n: p.wait(timeout=900).result() for n, p in pushes.items()}
    failed = {n: (p.rc, r.get("error")) for (n, p), r in zip(pushes.items(), results.values()) if p.rc != 0 or not r["ok"]}
    assert failed == {}, failed
    for n, r in results.items():
        check_whole(remote, n, {r["digest"]: want[n]})
    # The shared layers went over the wire about once, not ten times.
    sent = [d for r in results.values() for d in r["sent"]]
    shared = set.intersection(*(set(blobs_of(local.containerd_socket, n)) for n in names))
    print(f"blobs sent: {len(sent)} for 10 images ({len(set(sent))} distinct; shared layers sent "
          f"{sum(d in shared for d in sent)} times)")
    assert registry_containers(remote) == []
    no_upload_leftovers(remote)
