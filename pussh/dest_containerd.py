"""The direct path: the server's containerd driven over a unix socket forwarded through the SSH
connection. No container, no registry image, no port: blobs are written into its content store
under a lease (resumable from the offset containerd has, committed with the expected digest and
size), manifests carry the labels containerd's own pull sets, and the image record comes last.

Namespace: `moby` where Docker keeps its images in containerd (Docker unpacks on run); on a host
without Docker, `k8s.io` where containerd serves CRI (a Kubernetes node), else `default`
(nerdctl). Outside `moby` the image is unpacked into the snapshotter before it is tagged, and in
`k8s.io` it gets the records and labels of an image CRI pulled, so a pod starts without a pull."""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import ctrd
import ctrd.snapshots
from grpclib.client import Channel
from ctrd import imagestore, unpack
from ctrd.client import CONTENT_PLUGIN
from oci import digest as D
from oci import manifest as M
from oci import reference as R

from .copy import Source
from .errors import ConnectionLost, PusshError, Transient
from .plan import Plan
from .source import ImageSource
from .ssh import Connection

# An interrupted push's blobs and ingests stay this long for a re-run to resume; then GC takes them.
LEASE_EXPIRY = timedelta(hours=1)
DOCKER_NAMESPACE = ctrd.DEFAULT_NAMESPACE  # Docker's
CRI_NAMESPACE = "k8s.io"


class ContainerdDestination:
    via = "containerd"

    def __init__(self, ctr: ctrd.Containerd, conn: Connection, ref: R.Reference, snapshotter: str,
                 side: str = "the server's") -> None:
        """`side`: whose containerd it is, for errors (a pull writes into the local one)."""
        self.side = side
        self.ctr, self.conn, self.ref, self.snapshotter = ctr, conn, ref, snapshotter
        self.lease = ""
        self.label = conn.label
        self._diff_ids: dict[str, str | None] = {}
        self._images: list[tuple[dict, dict]] = []  # (manifest, config) of each platform, for unpack
        self.unpacked: list[str] = []  # chain IDs this push applied
        self._wrote = False  # something went in under the lease (then it stays, for a re-run, until tag)
        # Clients for blob writes, one connection (SSH channel) each: one channel's window (sshd's
        # 2 MiB) caps a stream, so blobs in flight each get their own (add_writer).
        self._writers: asyncio.Queue[ctrd.Containerd] = asyncio.Queue()

    def add_writer(self, ctr: ctrd.Containerd) -> None:
        """A client blob writes may take (one per blob in flight; the same one several times is fine
        on a local socket)."""
        self._writers.put_nowait(ctr)

    @property
    def namespace(self) -> str:
        return self.ctr.namespace

    @property
    def unpacks(self) -> bool:
        return self.namespace != DOCKER_NAMESPACE  # Docker unpacks its images itself, on run

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, conn: Connection, socket: str, ref: R.Reference, *, docker: bool, namespace: str | None,
                   snapshotter: str | None, relay: list[str] | None = None, jobs: int = 4,
                   docker_silent: str = "") -> AsyncIterator["ContainerdDestination"]:
        """`docker`: the server has Docker with the containerd store; `namespace`, `snapshotter`:
        the user's choice (None: found out); `relay`: a command whose stdio reaches the socket,
        where sshd does not forward it; `docker_silent`: why an installed Docker did not answer."""
        async with contextlib.AsyncExitStack() as stack:
            if relay:  # one relay process per connection
                local = await stack.enter_async_context(conn.relay(relay))

                def client(ns: str) -> ctrd.Containerd:  # a channel of ours: never a local file read
                    return ctrd.Containerd(local, ns, channel=Channel(path=local))
            else:
                from .grpc_ssh import SSHChannel

                def client(ns: str) -> ctrd.Containerd:
                    return ctrd.Containerd(socket, ns, channel=SSHChannel(conn.conn, socket))
            ctr = client(namespace or DOCKER_NAMESPACE)
            stack.callback(ctr.close)
            dest = cls(ctr, conn, ref, snapshotter or ctrd.snapshots.DEFAULT_SNAPSHOTTER)
            with dest._mapped("answering"):
                await dest._settle(docker, namespace, snapshotter, docker_silent)
                dest.lease = await ctr.leases.create(expire=LEASE_EXPIRY, labels={"pussh.push": ref.name})
            # Channels connect on their first call, so the unused ones cost nothing.
            for _ in range(jobs - 1):
                w = client(ctr.namespace)
                stack.callback(w.close)
                dest.add_writer(w)
            dest.add_writer(ctr)
            if not dest._wrote:  # a repeated push, a dry run or an early failure: nothing to keep
                stack.push_async_callback(dest._drop_unused_lease)
            yield dest

    async def _drop_unused_lease(self) -> None:
        if not self._wrote and self.lease:
            with contextlib.suppress(ctrd.ContainerdError):
                await self.ctr.leases.delete(self.lease)

    async def _settle(self, docker: bool, namespace: str | None, snapshotter: str | None,
                      docker_silent: str = "") -> None:
        if namespace is not None:
            have = await self.ctr.namespaces()
            if namespace not in have:
                raise PusshError(f"{self.label}: {self.side} containerd has no namespace {namespace!r} "
                                 f"(it has {', '.join(sorted(have)) or 'none'})")
        elif not docker:
            if docker_silent and DOCKER_NAMESPACE in await self.ctr.namespaces():
                # Docker uses this containerd but did not answer (restarting?): the image belongs
                # in its namespace, which Docker's store may or may not read; wait rather than guess.
                raise Transient(f"{docker_silent}; pass --namespace to write into containerd without Docker")
            self.ctr.namespace = CRI_NAMESPACE if await self.ctr.cri_loaded() else "default"
        if self.unpacks:
            have = await self.ctr.snapshotters()
            if self.snapshotter not in have:
                what = f"no snapshotter {self.snapshotter!r}" if snapshotter else \
                    f"no {self.snapshotter} snapshotter; choose one with --snapshotter"
                raise PusshError(f"{self.label}: {self.side} containerd has {what} (it has {', '.join(have) or 'none'})")

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        try:
            yield
        except ctrd.ContainerdError as err:
            if not self.conn.is_open():
                raise ConnectionLost(f"{self.label}: connection lost during the push ({err}); "
                                     "run it again to resume") from err
            if isinstance(err, ctrd.Unavailable):  # restarting, or a stream it reset: worth another try
                raise Transient(f"{self.label}: {self.side} containerd failed {what}: {err}") from err
            raise PusshError(f"{self.label}: {self.side} containerd failed {what}: {err}") from err

    async def current(self, name: str) -> str | None:
        """The digest the server's image record `name` points at, or None."""
        try:
            with self._mapped("reading an image record"):
                return (await self.ctr.images.get(name)).target.digest
        except PusshError as err:
            if isinstance(err.__cause__, ctrd.NotFound):
                return None
            raise

    async def prepare(self, plan: Plan, source: ImageSource) -> None:
        """The labels each blob gets: its diffID (from the image config) and the distribution source."""
        for image in plan.images:
            config = await source.read_small(image.config.digest) if image.config else None
            for dgst, diff_id in imagestore.child_labels(image, config).items():
                self._diff_ids.setdefault(dgst, diff_id)
            if config is not None:
                self._images.append((image.raw, json.loads(config)))

    async def lacking(self, blobs: list[M.Desc]) -> list[M.Desc]:
        """Which of `blobs` the server lacks, changing nothing (a dry run; `missing` also takes
        them under the push's lease and completes their labels)."""
        with self._mapped("listing its content"):
            infos = await asyncio.gather(*(self.ctr.content.exists(d.digest) for d in blobs))
        return [d for d, info in zip(blobs, infos) if info is None]

    async def missing(self, blobs: list[M.Desc]) -> list[M.Desc]:
        async def look(d: M.Desc) -> ctrd.Info | None:
            # Under our lease first: a blob that only an expiring lease holds must not be collected
            # between this look and the tag.
            await self.ctr.leases.add_resource(self.lease, d.digest)
            info = await self.ctr.content.exists(d.digest)
            if info is not None:
                want = imagestore.missing_labels(info.labels, self.ref.domain, self.ref.path,
                                                 self._diff_ids.get(d.digest))
                if want:
                    await self.ctr.content.set_labels(d.digest, want)
            return info
        with self._mapped("listing its content"):
            infos = await asyncio.gather(*(look(d) for d in blobs))
        return [d for d, info in zip(blobs, infos) if info is None]

    async def write(self, desc: M.Desc, source: Source) -> int | None:
        resumed = -1

        def from_offset(offset: int) -> AsyncIterator[bytes]:
            nonlocal resumed
            if resumed < 0:
                resumed = offset
            return source(offset)
        labels = imagestore.missing_labels({}, self.ref.domain, self.ref.path, self._diff_ids.get(desc.digest))
        self._wrote = True
        ctr = await self._writers.get()
        try:
            with self._mapped(f"writing {desc.digest[:19]}"):
                # The ref is the digest's, the same in every run: a re-run finds the ingest where this one left it.
                written = await ctr.content.write_blob(f"pussh-{D.hex_of(desc.digest)}", from_offset,
                                                       expected=desc.digest, total=desc.size, labels=labels,
                                                       lease=self.lease)
        finally:
            self._writers.put_nowait(ctr)
        if not written and resumed < 0:  # another writer committed it while this one waited for the ref
            return None
        return max(resumed, 0)

    # -- for the sub-layer delta (pussh.delta.containerd) --

    async def read_blob(self, digest: str) -> bytes:
        """A small blob of the server's (a manifest or an index)."""
        with self._mapped(f"reading {digest[:19]}"):
            return await self.ctr.content.read_all(digest)

    async def repository_image(self) -> str | None:
        """The target of the newest record of this push's repository on the server (another tag of
        it: the base a delta takes when the tag itself is new there), or None."""
        with self._mapped("listing its images"):
            images = await self.ctr.images.list()
        ours = [i for i in images if i.name.startswith((f"{self.ref.repository}:", f"{self.ref.repository}@"))]
        ours.sort(key=lambda i: (i.updated_at or i.created_at).timestamp() if (i.updated_at or i.created_at) else 0,
                  reverse=True)
        return ours[0].target.digest if ours else None

    async def content_dir(self) -> str | None:
        """The content store's directory on the server (where a helper finds the blob files)."""
        with self._mapped("answering"):
            plugins = await self.ctr.plugins(f"type=={CONTENT_PLUGIN}")
        return next((p.exports["root"] for p in plugins if p.exports.get("root")), None)

    async def layer_dir(self, chain_id: str) -> str | None:
        """The directory holding the files of the unpacked layer whose chain ID is `chain_id` (the
        top of a read-only view's mounts), or None: not unpacked, or no plain directory there."""
        snapshots = self.ctr.snapshots(self.snapshotter)
        key = f"pussh-look-{secrets.token_hex(8)}"
        try:
            mounts = await snapshots.view(key, chain_id, lease=self.lease)
        except ctrd.ContainerdError:
            return None
        try:
            return ctrd.snapshots.top_dir(mounts)
        finally:
            with contextlib.suppress(ctrd.ContainerdError):
                await snapshots.remove(key)

    async def adopt(self, digest: str, size: int, diff_id: str) -> None:
        """Register a blob that a helper on the server put into the content store's directory:
        a writer for a digest the store already holds commits without data, which records it in
        this namespace, under the push's lease, with its labels. DeltaFailed if it is not there."""
        from .delta.client import DeltaFailed

        async def nothing(offset: int) -> AsyncIterator[bytes]:
            return
            yield b""  # (an empty async generator)
        await self.ctr.leases.add_resource(self.lease, digest)
        self._diff_ids[digest] = diff_id
        labels = imagestore.missing_labels({}, self.ref.domain, self.ref.path, diff_id)
        self._wrote = True
        try:
            with self._mapped(f"adopting {digest[:19]}"):
                await self.ctr.content.write_blob(f"pussh-{D.hex_of(digest)}", nothing, expected=digest,
                                                  total=size, labels=labels, lease=self.lease)
        except PusshError as err:
            raise DeltaFailed(f"the server's containerd did not take the rebuilt blob: {err}") from err
        info = await self.ctr.content.exists(digest)
        if info is None or info.size != size:
            raise DeltaFailed(f"the server's containerd did not take the rebuilt blob {digest[:19]}")

    async def put_manifest(self, desc: M.Desc, body: bytes) -> None:
        labels = imagestore.manifest_labels(M.parse(body, desc.media_type), self.ref.domain, self.ref.path)

        async def whole(offset: int) -> AsyncIterator[bytes]:
            yield body[offset:]
        self._wrote = True
        with self._mapped(f"storing the manifest {desc.digest[:19]}"):
            if not await self.ctr.content.write_blob(f"pussh-manifest-{D.hex_of(desc.digest)}", whole,
                                                     expected=desc.digest, total=len(body), labels=labels,
                                                     lease=self.lease):
                await self.ctr.content.set_labels(desc.digest, labels)  # it was there: make sure of its labels

    async def tag(self, desc: M.Desc, body: bytes) -> None:
        await self.put_manifest(desc, body)
        if self.unpacks:
            with self._mapped("unpacking the image"):
                for manifest, config in self._images:
                    # under the push's lease: an interrupted unpack leaves only what the lease lets expire
                    done = await unpack.unpack(self.ctr, manifest, config, self.snapshotter, lease=self.lease)
                    self.unpacked += done.applied
        name = self.ref.name if self.ref.tag else f"{self.ref.repository}@{desc.digest}"
        names, labels = [name], {}
        if self.namespace == CRI_NAMESPACE and self._images:
            config_digest = self._images[0][0]["config"]["digest"]
            names, labels = unpack.cri_image_names(name, desc.digest, config_digest), unpack.cri_image_labels()
        target = ctrd.Descriptor(desc.media_type, desc.digest, desc.size)
        with self._mapped(f"tagging {name}"):
            for n in names:
                await self.ctr.images.put(n, target, labels, keep_replaced=self.namespace == DOCKER_NAMESPACE)
            # The records keep the image now (through the GC labels); the lease is done.
            await self.ctr.leases.delete(self.lease)
