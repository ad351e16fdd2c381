"""Unpacking into a Kubernetes-like node (store "none": containerd + CRI, no dockerd): blobs written
over the remote's socket into namespace k8s.io, ctrd.unpack commits one snapshot per chain ID, CRI's
image service lists the image, and `ctr run` starts it from the unpacked snapshots."""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from ctrd import Containerd, Descriptor
from ctrd.labels import gc_refs
from ctrd.unpack import (CRI_NAMESPACE, CriImages, UnpackError, chain_ids, cri_image_labels, cri_image_names,
                         snapshot_gc_label, unpack)
from testbed import TestbedError

from pussh_support import build_app_image

pytestmark = pytest.mark.e2e

NAME_V1 = "docker.io/library/pussh-unpack:1"
NAME_V2 = "docker.io/library/pussh-unpack:2"
NAME_BIG = "docker.io/library/pussh-unpack:big"


@pytest.fixture(scope="module")
def local(local_host):
    build_app_image(local_host, "pussh-unpack:1", [1, 1], seed="unpack", last_seed="v1")
    build_app_image(local_host, "pussh-unpack:2", [1, 1], seed="unpack", last_seed="v2")
    build_app_image(local_host, "pussh-unpack:big", [1, 24], seed="unpack-big")
    return local_host


@pytest.fixture
def node(make_remote):
    r = make_remote(store="none")
    plugins = r.run("ctr", "plugins", "ls").stdout
    for typ, pid in [("io.containerd.grpc.v1", "cri"), ("io.containerd.snapshotter.v1", "overlayfs")]:
        assert re.search(rf"^{re.escape(typ)}\s+{pid}\s+\S+\s+ok\s*$", plugins, re.M), plugins
    return r


async def local_image(local, name: str) -> tuple[dict, dict, dict[str, Descriptor]]:
    """(manifest, config, {digest: descriptor} of every blob) of the local image's amd64 manifest."""
    async with Containerd(local.containerd_socket, namespace="moby") as c:
        img = await c.images.get(name)
        body = json.loads(await c.content.read_all(img.target.digest))
        desc = img.target
        if "manifests" in body:  # buildkit's index: the image manifest beside its attestation manifest
            m = next(m for m in body["manifests"] if m.get("platform", {}).get("architecture") == "amd64")
            desc = Descriptor(m["mediaType"], m["digest"], m["size"])
            body = json.loads(await c.content.read_all(desc.digest))
        config = json.loads(await c.content.read_all(body["config"]["digest"]))
        blobs = {d["digest"]: Descriptor(d["mediaType"], d["digest"], d["size"]) for d in [body["config"], *body["layers"]]}
        blobs[desc.digest] = desc
        return body, config, blobs


async def push_blobs(local, node, name: str) -> tuple[dict, dict, Descriptor]:
    """Copy the image's blobs local -> node's containerd (k8s.io), manifest last with its GC labels,
    then the image records CRI would create. Returns (manifest, config, manifest descriptor)."""
    manifest, config, blobs = await local_image(local, name)
    mdesc = next(d for d in blobs.values() if d.media_type.endswith("manifest.v1+json"))
    async with Containerd(local.containerd_socket, namespace="moby") as src, \
            Containerd(node.containerd_socket_outside, namespace=CRI_NAMESPACE) as dst:
        await dst.ensure_namespace()
        async with dst.leases.temporary() as lease:
            for dgst, d in blobs.items():
                if dgst == mdesc.digest:
                    continue
                await dst.content.write_blob(f"test-{dgst}", lambda off, g=dgst: src.content.read(g, offset=off),
                                             expected=dgst, total=d.size, lease=lease)
            await dst.content.write_blob(f"test-{mdesc.digest}", lambda off: src.content.read(mdesc.digest, offset=off),
                                         expected=mdesc.digest, total=mdesc.size, labels=gc_refs(manifest), lease=lease)
            for n in cri_image_names(name, mdesc.digest, manifest["config"]["digest"]):
                await dst.images.put(n, mdesc, cri_image_labels())
    return manifest, config, mdesc


def committed_snapshots(node) -> dict[str, str]:
    """name -> kind from `ctr -n k8s.io snapshots ls` (overlayfs)."""
    out = {}
    for line in node.ctr("snapshots", "ls").stdout.splitlines()[1:]:
        parts = line.split()
        out[parts[0]] = parts[-1]
    return out


async def test_unpack_for_cri_and_run(local, node):
    manifest, config, mdesc = await push_blobs(local, node, NAME_V1)
    chains = chain_ids(config["rootfs"]["diff_ids"])
    assert len(chains) == 3  # busybox base + two data layers

    async with Containerd(node.containerd_socket_outside, namespace=CRI_NAMESPACE) as c:
        assert await c.cri_loaded()
        assert "overlayfs" in await c.snapshotters()

        res = await unpack(c, manifest, config)
        assert res.chain_ids == chains and res.applied == chains and res.top == chains[-1]
        snaps = c.snapshots("overlayfs")
        for i, chain in enumerate(chains):
            info = await snaps.stat(chain)
            assert info.committed and info.parent == (chains[i - 1] if i else "")
            assert info.labels["containerd.io/snapshot.ref"] == chain
        cfg = await c.content.info(manifest["config"]["digest"])
        assert cfg.labels[snapshot_gc_label("overlayfs")] == chains[-1]
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
            assert (await c.content.info(layer["digest"])).labels["containerd.io/uncompressed"] == diff_id
        assert {s.name for s in await snaps.list() if not s.committed} == set()

        again = await unpack(c, manifest, config)
        assert again.chain_ids == chains and again.applied == []

        # the CRI image service (what kubelet / crictl ask) knows the image under all three names
        cri = CriImages(c)
        status = None
        for _ in range(100):  # CRI picks images up from containerd's events, asynchronously
            status = await cri.status(NAME_V1)
            if status is not None:
                break
            await asyncio.sleep(0.05)
        assert status is not None, "CRI does not list the image"
        assert status.id == manifest["config"]["digest"]
        assert NAME_V1 in status.repo_tags
        assert f"docker.io/library/pussh-unpack@{mdesc.digest}" in status.repo_digests
        assert any(i.id == status.id for i in await cri.list())

    # seen from the node itself: committed snapshots per chain ID, the image in k8s.io
    listed = committed_snapshots(node)
    assert all(listed.get(ch) == "Committed" for ch in chains), listed
    assert NAME_V1 in node.ctr("images", "ls", "-q").stdout.split()

    # runs from the unpacked snapshots; prints what the local image prints (md5 of its data)
    want = local.docker("run", "--rm", "--network", "none", "pussh-unpack:1").stdout.strip()
    got = node.ctr("run", "--rm", NAME_V1, "unpack-run-1", timeout=60).stdout.strip()
    assert got == want and re.fullmatch(r"[0-9a-f]{32}\s+-", got)
    after = committed_snapshots(node)
    assert {k for k, v in after.items() if v == "Committed"} == {k for k, v in listed.items() if v == "Committed"}, \
        "ctr run had to unpack something itself"

    # v2 differs in its last layer only: only that layer is applied
    m2, c2, _ = await push_blobs(local, node, NAME_V2)
    async with Containerd(node.containerd_socket_outside, namespace=CRI_NAMESPACE) as c:
        res2 = await unpack(c, m2, c2)
    assert res2.chain_ids[:2] == chains[:2] and res2.applied == [res2.chain_ids[2]] != [chains[2]]
    want2 = local.docker("run", "--rm", "--network", "none", "pussh-unpack:2").stdout.strip()
    assert node.ctr("run", "--rm", NAME_V2, "unpack-run-2", timeout=60).stdout.strip() == want2 != want


async def test_failed_and_cancelled_unpack_leave_no_active_snapshot(local, node):
    manifest, config, _ = await push_blobs(local, node, NAME_BIG)
    diff_ids = config["rootfs"]["diff_ids"]
    async with Containerd(node.containerd_socket_outside, namespace=CRI_NAMESPACE) as c:
        snaps = c.snapshots()

        # a config whose last diffID does not match its layer: the layer is applied, then refused
        bad = {**config, "rootfs": {**config["rootfs"], "diff_ids": [*diff_ids[:-1], "sha256:" + "0" * 64]}}
        with pytest.raises(UnpackError, match="diffID"):
            await unpack(c, manifest, bad)
        left = await snaps.list()
        assert [s.name for s in left if not s.committed] == []
        assert chain_ids(bad["rootfs"]["diff_ids"])[-1] not in {s.name for s in left}

        # cancelled while the 24 MiB layer is being applied
        task = asyncio.create_task(unpack(c, manifest, config))
        async with Containerd(node.containerd_socket_outside, namespace=CRI_NAMESPACE) as watcher:
            top = chain_ids(diff_ids)[-1]
            for _ in range(2000):
                active = [s for s in await watcher.snapshots().list() if not s.committed]
                if any(s.name.endswith(" " + top) for s in active) or task.done():
                    break
                await asyncio.sleep(0.005)
        assert not task.done(), "unpack finished before it could be cancelled"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        left = await snaps.list()
        assert [s.name for s in left if not s.committed] == []
        assert top not in {s.name for s in left}

        # and a later unpack completes, applying just the layer that was never committed
        res = await unpack(c, manifest, config)
        assert res.applied == [res.top]
    assert all(v == "Committed" for v in committed_snapshots(node).values())


def test_none_store_has_no_docker(node):
    with pytest.raises(TestbedError, match="no dockerd"):
        node.docker("ps")
    with pytest.raises(TestbedError, match="no dockerd"):
        node.restart_dockerd()
    assert node.ctr("images", "ls").returncode == 0
    node.restart_containerd()  # waits for CRI again
    assert re.search(r"^io\.containerd\.grpc\.v1\s+cri\s.*\bok\b", node.run("ctr", "plugins", "ls").stdout, re.M)
