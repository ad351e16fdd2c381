"""ctrd against a real containerd: writes, both read paths, resume, races, labels, images, leases and GC."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from datetime import timedelta

import pytest

from ctrd import Containerd, Descriptor, NotFound, Unavailable
from ctrd.labels import gc_refs
from oci import digest as D
from oci import mediatypes as MT

from regsupport import bare_containerd

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def chunks_of(data: bytes, size: int = 8 * MiB):
    async def source(offset: int):
        for i in range(offset, len(data), size):
            yield data[i : i + size]
    return source


@pytest.fixture(scope="module")
def containerd_socket(tmp_path_factory) -> str:
    """A bare containerd of our own (no dockerd needed for the client's tests)."""
    with bare_containerd(tmp_path_factory.mktemp("ctrd")) as sock:
        yield sock


@pytest.fixture
async def ctr(containerd_socket: str):
    async with Containerd(containerd_socket, namespace=f"pussh-test-{os.getpid()}") as c:
        await c.ensure_namespace()
        yield c


async def sha256_of(stream) -> str:
    h = hashlib.sha256()
    async for chunk in stream:
        h.update(chunk)
    return "sha256:" + h.hexdigest()


async def test_version_and_content_root(ctr: Containerd):
    version, _ = await ctr.version()
    assert version.startswith("1.")
    root = await ctr.content_root()
    assert root is not None and root.endswith("io.containerd.content.v1.content")


async def test_200mb_blob_both_read_paths(ctr: Containerd):
    data = os.urandom(200 * MiB)
    dgst = D.of(data)
    async with ctr.leases.temporary() as lease:
        assert await ctr.content.write_blob("t-200", chunks_of(data), expected=dgst, total=len(data), lease=lease)
        assert (await ctr.content.info(dgst)).size == len(data)
        assert await ctr.content.blob_path(dgst) is not None  # the fast path is really taken
        assert await sha256_of(ctr.content.read(dgst)) == dgst
        assert await sha256_of(ctr.content.read_grpc(dgst)) == dgst
        # ranged reads agree too
        part = b"".join([c async for c in ctr.content.read(dgst, offset=5 * MiB + 3, size=MiB)])
        part_grpc = b"".join([c async for c in ctr.content.read_grpc(dgst, offset=5 * MiB + 3, size=MiB)])
        assert part == part_grpc == data[5 * MiB + 3 : 6 * MiB + 3]


async def test_interrupted_write_resumes_from_offset(ctr: Containerd):
    data = os.urandom(40 * MiB)
    dgst = D.of(data)
    async with ctr.leases.temporary() as lease:
        async with ctr.content.writer("t-resume", lease=lease) as w:
            assert await w.open(expected=dgst, total=len(data)) == 0
            await w.write(data[: 24 * MiB])
        # the stream is gone without a commit: the ingest keeps what it had
        assert (await ctr.content.status("t-resume")).offset == 24 * MiB
        seen: list[int] = []

        def source(offset: int):
            seen.append(offset)
            return chunks_of(data)(offset)

        assert await ctr.content.write_blob("t-resume", source, expected=dgst, total=len(data), lease=lease)
        assert seen == [24 * MiB]
        assert await sha256_of(ctr.content.read(dgst)) == dgst
        with pytest.raises(NotFound):
            await ctr.content.status("t-resume")


@pytest.mark.parametrize("same_ref", [False, True])
async def test_racing_writers_both_succeed(ctr: Containerd, same_ref: bool):
    data = os.urandom(30 * MiB)
    dgst = D.of(data)
    async with ctr.leases.temporary() as lease:
        refs = ["t-race", "t-race"] if same_ref else ["t-race-a", "t-race-b"]
        results = await asyncio.gather(
            *(ctr.content.write_blob(r, chunks_of(data, MiB), expected=dgst, total=len(data), lease=lease) for r in refs)
        )
        assert sorted(results) in ([False, True], [True, True])
        assert (await ctr.content.info(dgst)).size == len(data)


async def test_wrong_digest_is_refused(ctr: Containerd):
    data = os.urandom(MiB)
    async with ctr.leases.temporary() as lease:
        with pytest.raises(Exception) as err:
            await ctr.content.write_blob("t-bad", chunks_of(data), expected=D.of(b"other"), total=len(data), lease=lease)
        assert not isinstance(err.value, AssertionError)
        assert await ctr.content.exists(D.of(data)) is None


async def test_labels_set_and_read_back(ctr: Containerd):
    data = b"labels" + os.urandom(64)
    dgst = D.of(data)
    async with ctr.leases.temporary() as lease:
        await ctr.content.write_blob("t-labels", chunks_of(data), expected=dgst, total=len(data),
                                     labels={"a": "1"}, lease=lease)
        assert (await ctr.content.info(dgst)).labels == {"a": "1"}
        await ctr.content.set_labels(dgst, {"b": "2"})
        assert (await ctr.content.info(dgst)).labels == {"a": "1", "b": "2"}
        await ctr.content.set_labels(dgst, {"a": ""})
        assert (await ctr.content.info(dgst)).labels == {"b": "2"}


async def test_image_record_lifecycle(ctr: Containerd):
    d1 = Descriptor(MT.OCI_MANIFEST, D.of(b"one"), 3)
    d2 = Descriptor(MT.OCI_MANIFEST, D.of(b"two"), 3)
    name = "docker.io/library/lifecycle:1"
    img = await ctr.images.create(name, d1, {"k": "v"})
    assert img.target == d1 and img.labels == {"k": "v"}
    await ctr.images.put(name, d2)
    assert (await ctr.images.get(name)).target.digest == d2.digest
    assert name in [i.name for i in await ctr.images.list()]
    await ctr.images.delete(name)
    with pytest.raises(NotFound):
        await ctr.images.get(name)


async def test_expired_lease_content_is_collected(ctr: Containerd):
    data = os.urandom(MiB)
    dgst = D.of(data)
    lease = await ctr.leases.create(expire=timedelta(seconds=1))
    await ctr.content.write_blob("t-expire", chunks_of(data), expected=dgst, total=len(data), lease=lease)
    await ctr.leases.collect_garbage()
    assert await ctr.content.exists(dgst) is not None  # still leased
    await asyncio.sleep(2.5)
    await ctr.leases.collect_garbage()
    assert await ctr.content.exists(dgst) is None


async def test_image_gc_labels_keep_children(ctr: Containerd):
    layer = os.urandom(MiB)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": MT.OCI_MANIFEST,
        "config": {"mediaType": MT.OCI_CONFIG, "digest": D.of(config), "size": len(config)},
        "layers": [{"mediaType": MT.OCI_LAYER_GZIP, "digest": D.of(layer), "size": len(layer)}],
    }
    body = json.dumps(manifest).encode()
    lease = await ctr.leases.create(expire=timedelta(minutes=5))
    for ref, blob, labels in (("c", config, {}), ("l", layer, {}), ("m", body, gc_refs(manifest))):
        await ctr.content.write_blob(f"t-gc-{ref}", chunks_of(blob), expected=D.of(blob), total=len(blob),
                                     labels=labels, lease=lease)
    name = "docker.io/library/gckeep:1"
    await ctr.images.create(name, Descriptor(MT.OCI_MANIFEST, D.of(body), len(body)))
    await ctr.leases.delete(lease, sync=True)  # the lease no longer holds anything; GC has run
    for blob in (config, layer, body):
        assert await ctr.content.exists(D.of(blob)) is not None
    await ctr.images.delete(name, sync=True)
    for blob in (config, layer, body):
        assert await ctr.content.exists(D.of(blob)) is None


async def test_unreachable_socket_is_unavailable(tmp_path):
    with pytest.raises(Unavailable):
        async with Containerd(str(tmp_path / "nope.sock")) as c:
            await c.version()
