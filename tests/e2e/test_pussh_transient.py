"""Faults that pass within --timeout are ridden out: the SSH connection cut, the server's containerd
restarted, the registry container killed, each mid-blob. The push reconnects, resumes, exits 0 with
the new image whole, and the veth shows at most the image plus the blob that was in flight. A fault
that does not pass ends with one line and the old image whole."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from pussh_support import PYTHON, REPO_ROOT, build_app_image, build_registry_image
from test_pussh_push import layer_digests, run_output
from testbed._proc import cmdline, kill_pids, ns_inode, pids_in_netns

pytestmark = pytest.mark.e2e
MiB = 1 << 20
SIZES = [24, 24]  # MiB: two data layers, so one is committed while the other is in flight


@pytest.fixture(scope="module")
def local(local_host, remote_host):
    build_registry_image(local_host)
    # the registry image goes to the server once, before any bytes are counted
    build_app_image(local_host, "tr-warm:1", [1], seed="tr-warm")
    subprocess.run([PYTHON, "-m", "pussh", "-q", "-F", remote_host.ssh_config, "--via", "registry", "--registry-image",
                    "pussh-registry:test", "tr-warm:1", remote_host.alias], cwd=str(REPO_ROOT),
                   env={**os.environ, **local_host.env}, check=True, capture_output=True)
    return local_host


def ssh_sessions(remote) -> list[int]:
    """sshd's per-connection processes in the remote's namespace, not its listener."""
    out = []
    for pid in pids_in_netns(ns_inode(remote._holder.pid)):
        name = (cmdline(pid) or [""])[0]
        if name.startswith("sshd-session:") or (name.startswith("sshd: ") and "[listener]" not in name
                                                 and "/sshd" not in name):
            out.append(pid)
    return out


def registry_containers(remote) -> list[str]:
    return remote.docker("ps", "-q", "--filter", "label=pussh.registry=1").stdout.split()


def push_with_fault(local, remote, image: str, via: str, strike, *extra: str):
    """Start a push on a slow link, strike once a third of the image has crossed; returns
    (returncode, result or None, stderr, bytes on the veth)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CONTAINERD_ADDRESS", "SSH_AUTH_SOCK")}
    env.update(local.env)
    size = sum(layer_digests(local, image).values())
    with remote.shaped(rate="60mbit"):
        tx0, _ = remote.link_bytes()
        p = subprocess.Popen([PYTHON, "-m", "pussh", "--json", "-F", remote.ssh_config, "--via", via,
                              "--registry-image", "pussh-registry:test", *extra, image, remote.alias],
                             cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while remote.link_bytes()[0] - tx0 < size // 3:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the push did not get going"
            time.sleep(0.02)
        strike()
        out, err = p.communicate(timeout=180)
        wire = remote.link_bytes()[0] - tx0
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return p.returncode, (results[0] if results else None), err, wire, size


def ridden_out(local, remote, image, rc, res, err, wire, size):
    assert rc == 0 and res and res["ok"], err
    assert res["retries"] >= 1, res  # the fault did happen and was seen
    assert run_output(remote, image) == run_output(local, image)
    # at most the image, the blob in flight once more, and framing
    assert wire < size + SIZES[0] * MiB * 1.1 + 2 * MiB, (wire, size)


@pytest.mark.parametrize("via", ["containerd", "registry"])
def test_ssh_cut_mid_push(local, remote_host, via):
    image = f"tr-cut-{via}:1"
    build_app_image(local, image, SIZES, seed=image)

    def strike():
        pids = ssh_sessions(remote_host)
        assert pids, "no sshd session to cut"
        kill_pids(pids, signal.SIGKILL)
    ridden_out(local, remote_host, image, *push_with_fault(local, remote_host, image, via, strike))


def test_containerd_restarted_mid_push(local, remote_host):
    image = "tr-ctrd:1"
    build_app_image(local, image, SIZES, seed=image)
    before = remote_host._daemon("containerd").pid

    def strike():
        remote_host.restart_containerd()
        assert remote_host._daemon("containerd").pid != before
    rc, res, err, wire, size = push_with_fault(local, remote_host, image, "containerd", strike)
    ridden_out(local, remote_host, image, rc, res, err, wire, size)
    # resumed: the blob in flight was continued from containerd's offset, not sent again whole
    assert res["bytes_resumed"] > 0 or wire < size * 1.1 + 2 * MiB, res


def test_registry_killed_mid_push(local, remote_host):
    image = "tr-reg:1"
    build_app_image(local, image, SIZES, seed=image)

    def strike():
        ids = registry_containers(remote_host)
        assert ids, "no registry container to kill"
        remote_host.docker("kill", *ids)
    ridden_out(local, remote_host, image, *push_with_fault(local, remote_host, image, "registry", strike))


def test_fault_that_does_not_pass(local, remote_host):
    """The server unreachable for longer than --timeout: one line, exit 1, the old image whole; the
    next run completes."""
    image = "tr-gone:1"
    build_app_image(local, image, [2], seed="tr-gone-old")
    subprocess.run([PYTHON, "-m", "pussh", "-q", "-F", remote_host.ssh_config, image, remote_host.alias],
                   cwd=str(REPO_ROOT), env={**os.environ, **local.env}, check=True, capture_output=True)
    old = run_output(remote_host, image)
    build_app_image(local, image, SIZES, seed="tr-gone-new")

    def strike():
        remote_host.block_traffic()
        kill_pids(ssh_sessions(remote_host), signal.SIGKILL)
    try:
        rc, res, err, _, _ = push_with_fault(local, remote_host, image, "containerd", strike, "--timeout", "4")
    finally:
        remote_host.unblock_traffic()
    assert rc == 1 and res is not None and not res["ok"], err
    assert "run it again to resume" in res["error"] or "timed out connecting" in res["error"], res
    assert run_output(remote_host, image) == old
    r = subprocess.run([PYTHON, "-m", "pussh", "-q", "-F", remote_host.ssh_config, image, remote_host.alias],
                       cwd=str(REPO_ROOT), env={**os.environ, **local.env}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert run_output(remote_host, image) == run_output(local, image) != old
