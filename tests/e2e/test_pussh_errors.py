"""Every bad input and failure gets one line on stderr, no traceback, a non-zero exit; and an
interrupted push leaves nothing behind on the server."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pussh_support import PYTHON, REPO_ROOT, build_app_image, build_registry_image, pussh

pytestmark = pytest.mark.e2e
REG = ("-q", "--registry-image", "pussh-registry:test")  # -q: stderr holds just the error
VIA_REGISTRY = (*REG, "--via", "registry")  # the tests of what only the registry path does


@pytest.fixture(scope="module")
def local(local_host):
    build_registry_image(local_host)
    build_app_image(local_host, "err:1", [2], seed="err")
    return local_host


@pytest.fixture
def remote(remote_host):
    return remote_host


def fails(run, fragment: str, code: int = 1) -> None:
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert fragment in lines[0], lines[0]


def no_leftovers(remote, tag: str | None = None) -> None:
    assert remote.docker("ps", "-aq", "--filter", "label=pussh.registry=1").stdout.strip() == ""
    if tag:
        assert not remote.has_image(tag)


def ssh_config(tmp_path: Path, remote, **overrides: str) -> str:
    opts = {"HostName": remote.address, "User": "root", "IdentityFile": remote.ssh_key, "IdentitiesOnly": "yes",
            "UserKnownHostsFile": remote.known_hosts, "GlobalKnownHostsFile": "/dev/null",
            "HostKeyAlias": remote.alias, "ConnectTimeout": "5"}
    opts.update(overrides)
    p = tmp_path / "ssh_config"
    p.write_text("Host target\n" + "".join(f"  {k} {v}\n" for k, v in opts.items()))
    return str(p)


def test_no_such_local_image(local, remote):
    fails(pussh(local, "-F", remote.ssh_config, *REG, "nothere:1", remote.alias), "no such local image: nothere:1")


def test_invalid_reference(local, remote):
    fails(pussh(local, "-F", remote.ssh_config, "Bad:Ref:x", remote.alias), "invalid", code=2)


def test_platform_not_in_image(local, remote):
    fails(pussh(local, "-F", remote.ssh_config, *REG, "--platform", "linux/s390x", "err:1", remote.alias),
          "--platform linux/s390x is not in the image err:1", code=2)
    no_leftovers(remote)


def test_unknown_host(local):
    # No DNS traffic leaves the machine: pussh runs in a fresh network namespace with only loopback.
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CONTAINERD_ADDRESS")}
    env.update(local.env)
    p = subprocess.run(["unshare", "-n", PYTHON, "-m", "pussh", *REG, "err:1", "nosuchhost.invalid"],
                       capture_output=True, text=True, env=env, cwd=str(REPO_ROOT), timeout=120)
    fails(p, "unknown host 'nosuchhost.invalid'")


def test_connection_refused(local, remote, tmp_path):
    fails(pussh(local, "-F", ssh_config(tmp_path, remote, Port="2"), *REG, "err:1", "target"), "connection refused")


def test_timeout(local, remote, tmp_path):
    remote.block_traffic()
    try:
        fails(pussh(local, "--timeout", "2", "-F", ssh_config(tmp_path, remote), *REG, "err:1", "target"), "timed out")
    finally:
        remote.unblock_traffic()


def test_authentication_failure(local, remote, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    fails(pussh(local, "-F", ssh_config(tmp_path, remote, IdentityFile=str(key)), *REG, "err:1", "target"),
          "authentication failed")


def test_host_key_mismatch(local, remote, tmp_path):
    key = tmp_path / "fake_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{remote.alias} {' '.join(Path(str(key) + '.pub').read_text().split()[:2])}\n")
    fails(pussh(local, "-F", ssh_config(tmp_path, remote, UserKnownHostsFile=str(kh)), *REG, "err:1", "target"),
          "host key has CHANGED")


def test_unknown_host_key(local, remote, tmp_path):
    kh = tmp_path / "empty_known_hosts"
    kh.write_text("")
    fails(pussh(local, "-F", ssh_config(tmp_path, remote, UserKnownHostsFile=str(kh)), *REG, "err:1", "target"),
          "host key not known")


def test_no_docker_on_server(local, remote):
    fails(pussh(local, "-F", remote.ssh_config, *VIA_REGISTRY, "--remote-docker", "/usr/bin/no-docker-here", "err:1",
                remote.alias), "docker not found on the server")


def test_permission_denied_without_sudo(local, remote):
    user = remote.add_user("nobodyelse")
    fails(pussh(local, "-F", remote.ssh_config, *REG, "err:1", user.alias),
          "permission denied on the Docker socket and no passwordless sudo")


def test_no_containerd_socket(local, remote):
    fails(pussh(local, "-F", remote.ssh_config, *REG, "--remote-containerd-socket", "/run/nothing.sock", "err:1",
                remote.alias), "no containerd socket at /run/nothing.sock")


def test_registry_image_missing_on_both_sides(local, remote):
    fails(pussh(local, "-F", remote.ssh_config, "--via", "registry", "--registry-image", "pussh-registry:absent",
                "err:1", remote.alias),
          "the registry image pussh-registry:absent is neither on the server nor on this machine")
    no_leftovers(remote, "err:1")


def test_disk_full(local, remote):
    build_app_image(local, "big:1", [24], seed="big")
    assert pussh(local, "-F", remote.ssh_config, *REG, "err:1", remote.alias).returncode == 0  # registry image there
    ingest = "/var/lib/containerd/io.containerd.content.v1.content/ingest"
    remote.run("mkdir", "-p", ingest)
    remote.run("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", ingest)
    try:
        fails(pussh(local, "-F", remote.ssh_config, *REG, "big:1", remote.alias), "disk is full")
    finally:
        remote.run("umount", ingest)
    no_leftovers(remote, "big:1")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_nothing_and_next_push_completes(local, remote, sig):
    image = f"slow-{sig.name.lower()}:1"
    build_app_image(local, image, [48, 48], seed=f"slow-{sig.name}")
    remote.shape(rate="40mbit")
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CONTAINERD_ADDRESS")}
    env.update(local.env)
    try:
        p = subprocess.Popen([PYTHON, "-m", "pussh", "-F", remote.ssh_config, *VIA_REGISTRY, image, remote.alias],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO_ROOT))
        # Wait for the registry container to run (the push is under way), then interrupt.
        deadline = time.monotonic() + 120
        while not remote.docker("ps", "-q", "--filter", "label=pussh.registry=1").stdout.strip():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the push never started its registry"
            time.sleep(0.2)
        time.sleep(1)  # let blob uploads begin
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 130, (p.returncode, err)
        assert "Traceback" not in err, err
        no_leftovers(remote, image)
    finally:
        remote.unshape()
    r = pussh(local, "-F", remote.ssh_config, *REG, image, remote.alias)
    assert r.returncode == 0, r.stderr
    assert remote.has_image(image)
    no_leftovers(remote)


def test_interrupted_docker_load_leaves_no_tag(local, remote_host_classic):
    """Classic-store server: Ctrl-C while `docker load` reads the stream; no tag, and the next push completes."""
    from testbed._proc import cmdline, ns_inode, pids_in_netns

    remote = remote_host_classic
    build_app_image(local, "slowload:1", [48, 48], seed="slowload")
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CONTAINERD_ADDRESS")}
    env.update(local.env)

    def loading() -> bool:
        argvs = [cmdline(pid) for pid in pids_in_netns(ns_inode(remote._holder.pid))]  # read each once: they come and go
        return any(a[:1] and a[0].endswith("docker") and a[1:3] == ["load", "-q"] for a in argvs)

    remote.shape(rate="40mbit")
    try:
        p = subprocess.Popen([PYTHON, "-m", "pussh", "-F", remote.ssh_config, *REG, "slowload:1", remote.alias],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO_ROOT))
        deadline = time.monotonic() + 120
        while not loading():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "docker load never started"
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 130 and "Traceback" not in err, (p.returncode, err)
        assert not remote.has_image("slowload:1")
    finally:
        remote.unshape()
    r = pussh(local, "-F", remote.ssh_config, *REG, "slowload:1", remote.alias)
    assert r.returncode == 0, r.stderr
    assert remote.has_image("slowload:1")
