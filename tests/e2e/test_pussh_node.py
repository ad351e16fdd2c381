"""Servers without Docker: a Kubernetes-like node (containerd with CRI, no dockerd) pushed to with the
real CLI. Proved by what the node shows: CRI's image service, its committed snapshots, `ctr run`
of the image, and the bytes on its veth."""
from __future__ import annotations

import asyncio
import json

import pytest

from ctrd import Containerd
from ctrd.unpack import CRI_NAMESPACE, CriImages, chain_ids
from pussh_support import build_app_image, pussh
from test_pussh_direct import sent_on_wire
from test_pussh_push import layer_digests, run_output

pytestmark = pytest.mark.e2e
MiB = 1 << 20
NAME = "docker.io/library/node-app:1"


@pytest.fixture(scope="module")
def local(local_host):
    build_app_image(local_host, "node-app:1", [3, 8], seed="node", last_seed="v1")
    build_app_image(local_host, "node-app:2", [3, 8], seed="node", last_seed="v2")
    return local_host


@pytest.fixture(scope="module")
def node():
    from testbed import RemoteHost
    h = RemoteHost("none")
    try:
        yield h
    finally:
        h.stop()


def push(local, node, *args):
    r = pussh(local, "--json", "-v", "-F", node.ssh_config, *args, node.alias)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.splitlines()[0])


def committed(node, namespace=CRI_NAMESPACE) -> set[str]:
    lines = node.ctr("snapshots", "ls", namespace=namespace).stdout.splitlines()[1:]
    return {l.split()[0] for l in lines if l.split()[-1] == "Committed"}


def ctr_run(node, name: str, namespace=CRI_NAMESPACE) -> str:
    return node.ctr("run", "--rm", name, "pussh-node-check", namespace=namespace, timeout=60).stdout.strip()


async def cri_status(node, name: str):
    async with Containerd(node.containerd_socket_outside, CRI_NAMESPACE) as c:
        for _ in range(100):  # CRI learns of images from containerd's events
            status = await CriImages(c).status(name)
            if status is not None:
                return status
            await asyncio.sleep(0.05)
    return None


def test_push_to_a_kubernetes_node(local, node):
    want = run_output(local, "node-app:1")
    chains = chain_ids(local.diff_ids("node-app:1"))
    layers1 = layer_digests(local, "node-app:1")
    holder: dict = {}
    wire = sent_on_wire(node, lambda: holder.update(r=push(local, node, "node-app:1")))
    res = holder["r"]
    assert res["via"] == "containerd" and res["namespace"] == CRI_NAMESPACE
    assert sum(layers1.values()) <= wire < sum(layers1.values()) * 1.1 + MiB
    status = asyncio.run(cri_status(node, NAME))
    assert status is not None, "CRI's image service does not list the image"
    assert NAME in status.repo_tags and status.size > 0
    assert set(chains) <= committed(node)
    assert "node-app" in node.ctr("images", "ls", "-q").stdout
    assert ctr_run(node, NAME) == want

    again = sent_on_wire(node, lambda: holder.update(r=push(local, node, "node-app:1")))
    assert again < 300_000 and holder["r"]["unpacked"] == []

    layers2 = layer_digests(local, "node-app:2")
    changed = set(layers2) - set(layers1)
    size = layers2[next(iter(changed))]
    wire = sent_on_wire(node, lambda: holder.update(r=push(local, node, "node-app:2")))
    assert size <= wire < size * 1.1 + MiB
    chains2 = chain_ids(local.diff_ids("node-app:2"))
    assert holder["r"]["unpacked"] == [chains2[-1]]  # only the changed layer was unpacked
    assert ctr_run(node, "docker.io/library/node-app:2") == run_output(local, "node-app:2")


def test_plain_containerd_host_default_namespace(local, node):
    node.ctr("namespaces", "create", "default", namespace="default", check=False)
    res = push(local, node, "--namespace", "default", "node-app:1")
    assert res["namespace"] == "default"
    assert ctr_run(node, NAME, namespace="default") == run_output(local, "node-app:1")


@pytest.mark.parametrize("flag,value,says", [("--namespace", "nope", "has no namespace 'nope' (it has "),
                                             ("--snapshotter", "nope", "has no snapshotter 'nope' (it has ")])
def test_unknown_namespace_or_snapshotter(local, node, flag, value, says):
    before = node.ctr("images", "ls", "-q").stdout
    r = pussh(local, "-F", node.ssh_config, flag, value, "node-app:1", node.alias)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert says in r.stderr, r.stderr
    assert ("k8s.io" if flag == "--namespace" else "overlayfs") in r.stderr, r.stderr
    assert node.ctr("images", "ls", "-q").stdout == before


def test_node_user_without_socket_access(local, node):
    user = node.add_user("nodeuser")
    r = pussh(local, "-F", node.ssh_config, "node-app:1", user.alias)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "may not open /run/containerd/containerd.sock" in r.stderr, r.stderr
    assert "log in as root or as a member of the socket's group" in r.stderr, r.stderr
