"""Hardened servers: sshd with AllowTcpForwarding no, AllowStreamLocalForwarding no, DisableForwarding
yes. The push completes over a relay command's stdio where sshd forwards nothing, a re-push sends
nothing and a one-layer change sends that layer (by the veth counters), and an interrupted push
leaves the old image whole."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from pussh_support import PYTHON, REPO_ROOT, build_app_image, build_registry_image
from test_pussh_direct import push, sent_on_wire, sshd_option
from test_pussh_push import layer_digests, no_registry_left, run_output

pytestmark = pytest.mark.e2e
MiB = 1 << 20
# option -> (path, transport) for root, and for a docker-group user (who may not open the socket)
CASES = {
    # OpenSSH 9.2 refuses stream-local forwards under AllowTcpForwarding no as well (seen here)
    "AllowTcpForwarding no": (("containerd", "stdio"), ("registry", "stdio")),
    "AllowStreamLocalForwarding no": (("containerd", "stdio"), ("registry", "forward")),
    "DisableForwarding yes": (("containerd", "stdio"), ("registry", "stdio")),
}


@pytest.fixture(scope="module")
def local(local_host):
    build_registry_image(local_host)
    return local_host


@pytest.fixture(scope="module")
def dguser(remote_host):
    return remote_host.add_user("hardened", docker_group=True)


@pytest.mark.parametrize("user", ["root", "docker-group"])
@pytest.mark.parametrize("option", list(CASES))
def test_push_without_forwarding(local, remote_host, dguser, option, user):
    remote = remote_host
    tag = f"hard-{option.split()[0].lower()}-{user}"
    build_app_image(local, f"{tag}:1", [4, 8], seed=tag, last_seed="v1")
    build_app_image(local, f"{tag}:2", [4, 8], seed=tag, last_seed="v2")
    l1, l2 = layer_digests(local, f"{tag}:1"), layer_digests(local, f"{tag}:2")
    changed = l2[next(iter(set(l2) - set(l1)))]
    target = None if user == "root" else dguser.alias
    via, transport = CASES[option][0 if user == "root" else 1]
    reg = ("--registry-image", "pussh-registry:test")
    if user != "root":  # the registry image goes first, while sshd still forwards (not what is tested)
        push(local, remote, *reg, "--via", "registry", f"{tag}:1", target=target)
        remote.docker("rmi", f"{tag}:1")
    with sshd_option(remote, option):
        holder: dict = {}
        wire = sent_on_wire(remote, lambda: holder.update(r=push(local, remote, *reg, f"{tag}:1", target=target)))
        r, res = holder["r"]
        assert (res["via"], res["transport"]) == (via, transport), r.stderr
        assert run_output(remote, f"{tag}:1") == run_output(local, f"{tag}:1")
        if user == "root":
            assert sum(l1.values()) <= wire < sum(l1.values()) * 1.1 + MiB
        assert sent_on_wire(remote, lambda: push(local, remote, *reg, f"{tag}:1", target=target)) < 300_000
        wire = sent_on_wire(remote, lambda: push(local, remote, *reg, f"{tag}:2", target=target))
        assert changed <= wire < changed * 1.1 + MiB
        assert run_output(remote, f"{tag}:2") == run_output(local, f"{tag}:2")
        no_registry_left(remote)


def test_transport_stdio_forced(local, remote_host):
    """--transport stdio where sshd would forward: the same push over the relay, both paths."""
    build_app_image(local, "hard-forced:1", [2], seed="hard-forced")
    for via in ("containerd", "registry"):
        remote_host.docker("rmi", "hard-forced:1", check=False)
        r, res = push(local, remote_host, "--registry-image", "pussh-registry:test", "--via", via,
                      "--transport", "stdio", "hard-forced:1")
        assert (res["via"], res["transport"]) == (via, "stdio"), r.stderr
        assert run_output(remote_host, "hard-forced:1") == run_output(local, "hard-forced:1")


def test_interrupted_push_without_forwarding_leaves_old_image(local, remote_host):
    remote = remote_host
    build_app_image(local, "hard-int:1", [2], seed="hard-int", last_seed="v1")
    build_app_image(local, "hard-int:2", [40], seed="hard-int", last_seed="v2")
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CONTAINERD_ADDRESS", "SSH_AUTH_SOCK")}
    env.update(local.env)
    with sshd_option(remote, "DisableForwarding yes"):
        push(local, remote, "hard-int:1")
        old_out = run_output(remote, "hard-int:1")
        local.docker("tag", "hard-int:2", "hard-int:1")
        old = remote.docker("image", "inspect", "--format", "{{.Id}}", "hard-int:1").stdout.strip()
        with remote.shaped(rate="80mbit"):
            tx0, _ = remote.link_bytes()
            p = subprocess.Popen([PYTHON, "-m", "pussh", "-q", "-F", remote.ssh_config, "hard-int:1", remote.alias],
                                 cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while remote.link_bytes()[0] - tx0 < 20 * MiB:
                assert p.poll() is None, p.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.02)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)
            assert p.returncode == 130 and len(err.strip().splitlines()) == 1, err
        assert remote.docker("image", "inspect", "--format", "{{.Id}}", "hard-int:1").stdout.strip() == old
        assert run_output(remote, "hard-int:1") == old_out != run_output(local, "hard-int:2")
        r, res = push(local, remote, "hard-int:1")
        assert res["transport"] == "stdio"
        assert run_output(remote, "hard-int:1") == run_output(local, "hard-int:2")
