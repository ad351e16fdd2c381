"""The direct path (--via containerd) against the real test bed: the server's containerd written over
a forwarded socket. Proved by what the server shows: its Docker events (no container, no image
load), its containerd state, the bytes on its veth, and a container of the image that runs."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from pussh_support import PYTHON, REPO_ROOT, build_app_image, build_registry_image, pussh
from test_pussh_push import layer_digests, no_registry_left, run_output

pytestmark = pytest.mark.e2e
MiB = 1 << 20


@pytest.fixture(scope="module")
def local(local_host):
    build_registry_image(local_host)  # for the tests of the paths that need it
    build_app_image(local_host, "direct:1", [6, 4, 12], seed="direct", last_seed="v1")
    build_app_image(local_host, "direct:2", [6, 4, 12], seed="direct", last_seed="v2")
    return local_host


def push(local, remote, *args, target=None, check=True):
    r = pussh(local, "--json", "-v", "-F", remote.ssh_config, *args, target or remote.alias)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r, (results[0] if results else None)


def remote_now(remote) -> str:
    return remote.run("date", "+%s.%N").stdout.strip()


def docker_events(remote, since: str) -> list[dict]:
    out = remote.docker("events", "--since", since, "--until", remote_now(remote), "--format", "{{json .}}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def sent_on_wire(remote, fn) -> int:
    tx0, _ = remote.link_bytes()
    fn()
    return remote.link_bytes()[0] - tx0


@contextlib.contextmanager
def sshd_option(remote, line: str):
    """sshd with one more option for every user (SIGHUP: it re-executes itself and reads its config)."""
    path = remote.dir / "ssh/sshd_config"
    before = path.read_text()
    path.write_text(before + f"Match all\n  {line}\n")
    _reload_sshd(remote)
    try:
        yield
    finally:
        path.write_text(before)
        _reload_sshd(remote)


def _reload_sshd(remote) -> None:
    os.kill(remote._daemon("sshd").pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    time.sleep(0.3)
    while remote.ssh("true", check=False, timeout=10).returncode != 0:
        assert time.monotonic() < deadline, "sshd did not come back after SIGHUP"
        time.sleep(0.2)


def test_direct_push_no_container_only_missing_bytes(local, remote_host):
    remote = remote_host
    layers1, layers2 = layer_digests(local, "direct:1"), layer_digests(local, "direct:2")
    changed = set(layers2) - set(layers1)
    assert len(changed) == 1
    since = remote_now(remote)
    images_before = remote.docker("images", "-q", "--no-trunc").stdout.split()
    leases_before = set(remote.run("ctr", "-n", "moby", "leases", "ls", "-q").stdout.split())

    holder: dict = {}
    wire = sent_on_wire(remote, lambda: holder.update(first=push(local, remote, "direct:1")[1]))
    first = holder["first"]
    assert first["via"] == "containerd"
    total = sum(layers1.values())
    assert total <= wire < total * 1.1 + MiB, (wire, total)
    assert run_output(remote, "direct:1") == run_output(local, "direct:1")
    assert remote.diff_ids("direct:1") == local.diff_ids("direct:1")

    # No container and no image load on the server for the push itself: only the check run above.
    pushed = [e for e in docker_events(remote, since) if e.get("Type") in ("container", "image")
              and e.get("Action") in ("create", "load", "import", "pull")]
    ours = [e for e in pushed if e.get("Type") == "container" and e.get("Actor", {}).get("Attributes", {}).get("image") != "direct:1"]
    assert not ours and not [e for e in pushed if e.get("Type") == "image"], pushed
    new_images = set(remote.docker("images", "-q", "--no-trunc").stdout.split()) - set(images_before)
    assert len(new_images) == 1, new_images  # direct:1 itself, and no registry image
    no_registry_left(remote)
    # The lease of the push is gone; the layers carry their diffIDs as containerd's pull labels them.
    assert set(remote.run("ctr", "-n", "moby", "leases", "ls", "-q").stdout.split()) <= leases_before
    labels = remote.run("ctr", "-n", "moby", "content", "ls").stdout
    for diff_id in local.diff_ids("direct:1"):
        assert f"containerd.io/uncompressed={diff_id}" in labels

    again = sent_on_wire(remote, lambda: push(local, remote, "direct:1"))
    assert again < 300_000, f"a repeated push sent {again} bytes"

    holder.clear()
    changed_size = layers2[next(iter(changed))]
    wire = sent_on_wire(remote, lambda: holder.update(second=push(local, remote, "direct:2")[1]))
    assert changed_size <= wire < changed_size * 1.1 + MiB, (wire, changed_size)
    assert set(holder["second"]["sent"]) & (set(layers1) | set(layers2)) == changed
    assert run_output(remote, "direct:2") == run_output(local, "direct:2")


def test_docker_group_user_takes_the_registry_path(local, remote_host):
    """The socket is root's: a docker-group user gets the registry path, and -v says why."""
    user = remote_host.add_user("dgdirect", docker_group=True)
    build_app_image(local, "direct:dg", [1], seed="dg")
    r, res = push(local, remote_host, "--registry-image", "pussh-registry:test", "direct:dg", target=user.alias)
    assert res["via"] == "registry"
    assert "this user may not open /run/containerd/containerd.sock" in r.stderr, r.stderr
    assert run_output(remote_host, "direct:dg") == run_output(local, "direct:dg")
    forced = pussh(local, "-F", remote_host.ssh_config, "--via", "containerd", "direct:dg", user.alias)
    assert forced.returncode == 1 and len(forced.stderr.strip().splitlines()) == 1, forced.stderr
    assert "--via containerd" in forced.stderr and "--via registry" in forced.stderr


def test_interrupted_direct_push_resumes(local, remote_host):
    """SIGINT mid-blob at a slow rate: no tag, the old image whole; the re-run sends only the rest."""
    remote = remote_host
    build_app_image(local, "direct:big", [40], seed="big1")
    size = sum(layer_digests(local, "direct:big").values())
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CONTAINERD_ADDRESS", "SSH_AUTH_SOCK")}
    env.update(local.env)
    with remote.shaped(rate="80mbit"):
        tx0, _ = remote.link_bytes()
        p = subprocess.Popen([PYTHON, "-m", "pussh", "-q", "-F", remote.ssh_config, "direct:big", remote.alias],
                             cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while remote.link_bytes()[0] - tx0 < size // 2:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        first = remote.link_bytes()[0] - tx0
        assert p.returncode == 130, err
        assert len(err.strip().splitlines()) == 1, err
    assert not remote.has_image("direct:big")
    second = sent_on_wire(remote, lambda: push(local, remote, "direct:big"))
    assert first > size * 0.4
    # what the first run had sent is not sent again (the veth shows it)
    assert second < size - first * 0.8 + MiB, (first, second, size)
    assert run_output(remote, "direct:big") == run_output(local, "direct:big")


def test_a_moved_tag_leaves_the_old_image_dangling_as_docker_does(local, remote_host):
    """A push that moves a tag keeps the image it named as Docker's `<none>` (a container of it
    still runs, `docker image prune` removes it), as `docker pull` does, rather than leaving it to
    containerd's garbage collection, which would also take the layers the new image shares before
    Docker has unpacked it."""
    remote = remote_host
    for v in ("a", "b"):  # images no other tag names, on either side
        build_app_image(local, f"dangle:{v}", [1, 1], seed="dangle", last_seed=v)
    local.docker("tag", "dangle:a", "dangle:moving")
    old = push(local, remote, "dangle:moving")[1]["digest"]
    local.docker("tag", "dangle:b", "dangle:moving")
    new = push(local, remote, "dangle:moving")[1]["digest"]
    assert old != new
    dangling = remote.docker("images", "-q", "--no-trunc", "--filter", "dangling=true").stdout.split()
    assert old in dangling and new not in dangling, dangling
    assert run_output(remote, old) == run_output(local, "dangle:a")
    assert run_output(remote, "dangle:moving") == run_output(local, "dangle:b")
    remote.docker("image", "prune", "-f")
    assert old not in remote.docker("images", "-aq", "--no-trunc").stdout.split()
    assert run_output(remote, "dangle:moving") == run_output(local, "dangle:b")
