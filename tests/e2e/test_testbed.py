"""The test bed itself: separate daemons per host, real SSH, deterministic test images, shaping, faults."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from testbed import LocalHost, RemoteHost, build_test_image, build_test_image_pair

pytestmark = pytest.mark.e2e


def _connect_seconds(host: RemoteHost) -> float:
    """Median TCP handshake time to the remote's sshd: one RTT."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        with socket.create_connection((host.address, 22), timeout=5):
            times.append(time.perf_counter() - t0)
    return sorted(times)[2]


@pytest.mark.parametrize("which", ["remote_host", "remote_host_classic"])
def test_remote_docker_info_over_ssh_is_its_own(request, local_host: LocalHost, which: str) -> None:
    remote: RemoteHost = request.getfixturevalue(which)
    info = json.loads(remote.ssh("docker", "info", "--format", "{{json .}}").stdout)
    local = local_host.info()
    assert info["Name"] == remote.hostname != local["Name"]
    assert info["ID"] != local["ID"]
    assert info["DockerRootDir"] == "/var/lib/docker"
    snapshotter = any("io.containerd.snapshotter" in str(v) for v in info.get("DriverStatus") or [])
    assert snapshotter == (remote.store == "containerd"), info["Driver"]
    if remote.store == "classic":
        assert info["Driver"] in ("overlay2", "vfs", "fuse-overlayfs")


def test_remote_containerd_socket_is_not_the_local_one(remote_host: RemoteHost, local_host: LocalHost) -> None:
    inside = remote_host.run("stat", "-c", "%d:%i", remote_host.containerd_socket).stdout.strip()
    st = os.stat(remote_host.containerd_socket_outside)
    assert inside == f"{st.st_dev}:{st.st_ino}"  # the remote's /run is its private directory
    if os.path.exists("/run/containerd/containerd.sock"):
        root = os.stat("/run/containerd/containerd.sock")
        assert (root.st_dev, root.st_ino) != (st.st_dev, st.st_ino)
    assert remote_host.containerd_socket_outside != local_host.containerd_socket
    # and the daemon behind it answers, seen from an SSH session
    out = remote_host.ssh("ctr", "--address", "/run/containerd/containerd.sock", "version").stdout
    assert "Server:" in out


def test_image_pair_differs_only_in_last_layer(local_host: LocalHost, remote_host_classic: RemoteHost) -> None:
    ref, ref2 = build_test_image_pair(local_host, "tb/pair:1", [3, 2, 1], text_mb=0.5)
    assert ref2 == "tb/pair:1-v2"
    a, b = local_host.diff_ids(ref), local_host.diff_ids(ref2)
    assert len(a) == len(b) == 4  # busybox + 3 data layers
    assert a[:-1] == b[:-1] and a[-1] != b[-1]
    # deterministic: the same call on another host (other store) gives the same layers
    build_test_image(remote_host_classic, ref, [3, 2, 1], text_mb=0.5)
    assert remote_host_classic.diff_ids(ref) == a
    out = local_host.docker("run", "--rm", "--pull", "never", "--network", "none", ref, "cat", "/data/layer2/notes.txt")
    assert out.stdout.startswith("# tb/pair:1/2/v1")


def test_shaping_delay_and_rate(make_remote) -> None:
    remote: RemoteHost = make_remote(delay="15ms")
    rtt = _connect_seconds(remote)
    assert 0.028 < rtt < 0.2, rtt  # one-way delay on each end: RTT = 2 x 15 ms
    remote.unshape()
    assert _connect_seconds(remote) < 0.01
    with remote.shaped(rate="40mbit"):
        tx0, _ = remote.link_bytes()
        t0 = time.monotonic()
        remote.ssh("sh", "-c", "cat > /dev/null", input=os.urandom(5 << 20))
        took = time.monotonic() - t0
        tx1, _ = remote.link_bytes()
    assert tx1 - tx0 > 5 << 20
    assert took > 0.9, took  # 5 MiB at 40 Mbit/s >= 1.05 s


def test_users(remote_host: RemoteHost) -> None:
    dev = remote_host.add_user("dev", docker_group=True)
    adm = remote_host.add_user("adm", sudo_nopasswd=True)
    plain = remote_host.add_user("plain")
    assert remote_host.ssh("id", "-un", user=dev).stdout.strip() == dev.name
    assert remote_host.ssh("docker", "info", "--format", "{{.Name}}", user=dev).stdout.strip() == remote_host.hostname
    assert remote_host.ssh("docker", "info", user=plain, check=False).returncode != 0
    assert remote_host.ssh("sudo", "-n", "docker", "info", "--format", "{{.Name}}",
                           user=adm).stdout.strip() == remote_host.hostname
    assert remote_host.ssh("sudo", "-n", "true", user=plain, check=False).returncode != 0


def test_faults_restart_and_block(make_remote) -> None:
    remote: RemoteHost = make_remote()
    remote.kill_containerd()
    remote.restart_containerd()
    remote.restart_dockerd()
    assert remote.ssh("docker", "version", "--format", "{{.Server.Version}}").stdout.strip()
    remote.block_traffic()
    t0 = time.monotonic()
    assert remote.ssh("true", check=False, timeout=30).returncode != 0
    assert time.monotonic() - t0 > 3  # dropped, not refused: the client hits its ConnectTimeout
    remote.unblock_traffic()
    assert remote.ssh("true").returncode == 0


@pytest.mark.slow
def test_python_base_image(local_host: LocalHost) -> None:
    """debootstrap + apt in a chroot, cached as a rootfs tarball; 70-90 s the first time on this machine."""
    from testbed import build_python_base

    ref = build_python_base(local_host)
    out = local_host.docker("run", "--rm", "--pull", "never", "--network", "none", ref, "python3", "-c",
                            "import sys, venv, ensurepip; print(sys.version_info[:2])").stdout
    assert out.strip() == "(3, 11)"
    # a derived build with a RUN step works offline (--network none)
    import tempfile
    with tempfile.TemporaryDirectory() as ctx:
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(f"FROM {ref}\nRUN python3 -m venv /opt/venv && /opt/venv/bin/python -c 'print(42)' > /ok\n")
        local_host.docker("build", "-q", "--network", "none", "-t", "tb/pyderived:1", ctx, timeout=300)
    assert local_host.docker("run", "--rm", "--pull", "never", "--network", "none", "tb/pyderived:1",
                             "cat", "/ok").stdout.strip() == "42"
