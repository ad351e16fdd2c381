"""Choosing what to send: single manifests, multi-platform indexes, partial indexes, attestations."""
import json

import pytest

from oci import digest as D
from oci import mediatypes as MT
from oci import reference as R
from oci.manifest import Desc, Platform, parse
from pussh.errors import PusshError, UsageError
from pussh.plan import make_plan

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")


class FakeSource:
    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.ref = R.parse("myapp:1")
        self.root = None
        self.description = "fake"

    def add(self, body: bytes) -> str:
        d = D.of(body)
        self.blobs[d] = body
        return d

    async def read_small(self, digest):
        return self.blobs[digest]

    async def has(self, digest):
        return digest in self.blobs

    def opener(self, digest):
        raise NotImplementedError

    async def close(self):
        pass


def image(src: FakeSource, plat: Platform, layer_bytes: list[bytes]) -> Desc:
    cfg = json.dumps({"os": plat.os, "architecture": plat.architecture, "rootfs": {}}).encode()
    layers = [{"mediaType": MT.OCI_LAYER_GZIP, "digest": src.add(b), "size": len(b)} for b in layer_bytes]
    m = json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_MANIFEST,
                    "config": {"mediaType": MT.OCI_CONFIG, "digest": src.add(cfg), "size": len(cfg)},
                    "layers": layers}).encode()
    return Desc(MT.OCI_MANIFEST, src.add(m), len(m), plat)


def index(src: FakeSource, manifests: list[Desc]) -> Desc:
    body = json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_INDEX,
                       "manifests": [m.to_json() for m in manifests]}).encode()
    return Desc(MT.OCI_INDEX, src.add(body), len(body))


async def test_single_manifest():
    src = FakeSource()
    src.root = image(src, AMD64, [b"a", b"b"])
    plan = await make_plan(src, [AMD64], explicit=False)
    assert plan.root == src.root
    assert [d.digest for d, _ in plan.manifests] == [src.root.digest]
    assert len(plan.blobs) == 3 and plan.platforms == [AMD64]


async def test_single_manifest_wrong_explicit_platform():
    src = FakeSource()
    src.root = image(src, AMD64, [b"a"])
    with pytest.raises(UsageError, match="--platform linux/arm64 is not in the image myapp:1"):
        await make_plan(src, [ARM64], explicit=True)


async def test_full_index_is_pushed_as_is():
    src = FakeSource()
    src.root = index(src, [image(src, AMD64, [b"a", b"shared"])])
    plan = await make_plan(src, [AMD64], explicit=False)
    assert plan.root.digest == src.root.digest
    assert len(plan.manifests) == 2 and plan.manifests[-1][0].digest == src.root.digest


async def test_partial_index_becomes_smaller_index():
    src = FakeSource()
    amd = image(src, AMD64, [b"a", b"shared"])
    arm = image(src, ARM64, [b"b", b"shared"])
    src.root = index(src, [amd, arm])
    plan = await make_plan(src, [ARM64], explicit=True)
    root_desc, root_body = plan.manifests[-1]
    assert root_desc.digest == D.of(root_body) != src.root.digest
    assert [m.digest for m in parse(root_body).manifests] == [arm.digest]
    assert {b.digest for b in plan.blobs} == {D.of(b"b"), D.of(b"shared"), parse(src.blobs[arm.digest]).config.digest}
    both = await make_plan(src, [AMD64, ARM64], explicit=True)
    assert both.root.digest == src.root.digest
    assert len(both.blobs) == 5  # two configs, a, b, shared once


async def test_platform_missing_locally():
    src = FakeSource()
    amd = image(src, AMD64, [b"a"])
    arm = image(src, ARM64, [b"b"])
    src.root = index(src, [amd, arm])
    del src.blobs[arm.digest]
    with pytest.raises(PusshError, match="not present locally"):
        await make_plan(src, [ARM64], explicit=True)
    plan = await make_plan(src, [AMD64], explicit=False)  # the present platform still goes
    assert [m.digest for m in parse(plan.manifests[-1][1]).manifests] == [amd.digest]


async def test_platform_not_in_index():
    src = FakeSource()
    src.root = index(src, [image(src, AMD64, [b"a"])])
    with pytest.raises(UsageError, match=r"--platform linux/s390x is not in the image myapp:1 \(it has linux/amd64\)"):
        await make_plan(src, [Platform("linux", "s390x")], explicit=True)
    with pytest.raises(PusshError, match="no linux/arm64 variant"):
        await make_plan(src, [ARM64], explicit=False)


async def test_attestation_follows_its_manifest():
    src = FakeSource()
    amd = image(src, AMD64, [b"a"])
    arm = image(src, ARM64, [b"b"])
    att = image(src, Platform("unknown", "unknown"), [b"provenance"])
    att = Desc(att.media_type, att.digest, att.size, Platform("unknown", "unknown"),
               {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": amd.digest})
    src.root = index(src, [amd, arm, att])
    plan = await make_plan(src, [AMD64], explicit=False)
    assert [m.digest for m in parse(plan.manifests[-1][1]).manifests] == [amd.digest, att.digest]
    assert plan.platforms == [AMD64]


async def test_incomplete_local_image():
    src = FakeSource()
    src.root = image(src, AMD64, [b"a", b"b"])
    del src.blobs[D.of(b"b")]
    with pytest.raises(PusshError, match="incomplete"):
        await make_plan(src, [AMD64], explicit=False)
