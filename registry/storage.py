"""The storage beneath the handlers: blobs, uploads, manifests and tags, all kept in one containerd
namespace (Docker's `moby` by default), so a pushed image is at once an image of this host.

Layout in containerd:
- every blob and manifest is content, shared by all repositories of the namespace;
- an upload is an ingest `pussh-upload-<id>` written under a lease of the same name that expires
  after `upload_expiry`: an abandoned upload (and a blob no manifest came to claim) is collected;
- a tag is an image record named as Docker names it (`myapp` + `1` -> `docker.io/library/myapp:1`);
  manifests and indexes carry containerd's GC reference labels, so the record keeps the image;
- a manifest pushed by digest only (an index's child, a referrer) is kept by the persistent lease
  `pussh-registry-untagged` until it is deleted, or, for an index's child, until an index that
  points at it is pushed (from then on the index keeps it alive, and `docker rmi` frees it);
- every manifest PUT is also held for the upload expiry by a shared `pussh-hold-*` lease (as are
  mounted blobs): containerd's pusher tags each child of an index in turn, and a tag that moves on
  must not leave the previous child to GC before the index that needs it arrives;
- labels `pussh.registry.*` on manifests record what the content store cannot: the media type
  (for GET by digest), the subject and artifact type (for the referrers API).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

from ctrd import DEFAULT_NAMESPACE, Containerd, Descriptor, errors
from ctrd import imagestore
from ctrd.imagestore import LABEL_MEDIA_TYPE
from ctrd.labels import GC_REF_CONTENT
from ctrd.writer import Writer
from oci import digest as D
from oci import manifest as M
from oci import mediatypes as MT
from oci import reference as R

from . import errors as E

log = logging.getLogger("pussh.registry.storage")

MANIFEST_LIMIT = 4 << 20
LABEL_SUBJECT = "pussh.registry.subject"
LABEL_ARTIFACT_TYPE = "pussh.registry.artifacttype"
UNTAGGED_LEASE = "pussh-registry-untagged"
UPLOAD_PREFIX = "pussh-upload-"
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}\Z")
# Layers a registry is not expected to hold (Windows foreign layers): not required to exist.
NONDISTRIBUTABLE = ("application/vnd.docker.image.rootfs.foreign.", "application/vnd.oci.image.layer.nondistributable.")
SESSION_IDLE = 30.0  # seconds an upload's open write stream may sit unused before it is ended
SWEEP_EVERY = 5.0  # seconds between looks for such streams
# WRITE messages in flight per upload: each holds a body batch (http.BATCH), so this bounds memory.
WRITE_WINDOW = 2


@dataclass
class Session:
    """An upload's open write stream; requests of one upload take its lock in turn."""

    upload_id: str
    ingest: Writer | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    size: int
    body: bytes | None = None


def image_name(repo: str, tag: str) -> str:
    return imagestore.image_name(*R.split_domain(repo), tag)


def repository_of(name: str) -> tuple[str, str] | None:
    """(repository as a registry client addresses it, tag) for an image record name, or None
    for a record no client could address (digest-only names, hosts with ports)."""
    base, _, tag = name.rpartition(":")
    if not base or "/" in tag or "@" in name or not R.TAG_RE.match(tag):
        return None
    domain, _, path = base.partition("/")
    if domain == R.DEFAULT_DOMAIN:
        repo = path.removeprefix(R.OFFICIAL_PREFIX)
    else:
        repo = base
    return (repo, tag) if R.is_valid_repository(repo) else None


def sniff_media_type(body: bytes) -> str:
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(raw, dict):
        return ""
    mt = raw.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    return MT.OCI_INDEX if "manifests" in raw else MT.OCI_MANIFEST


class Storage:
    def __init__(self, ctr: Containerd, *, upload_expiry: timedelta = timedelta(hours=1),
                 lock_timeout: float = 60.0) -> None:
        self.ctr = ctr
        self.upload_expiry = upload_expiry
        self.lock_timeout = lock_timeout
        self._sessions: dict[str, Session] = {}
        # Write streams on a connection of their own, so that bulk WRITEs never delay the small calls.
        self._writes = Containerd(ctr.socket_path, ctr.namespace)
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.ctr.ensure_namespace()
        try:
            await self.ctr.leases.create(UNTAGGED_LEASE, labels={"pussh.registry": "untagged manifests"})
        except errors.AlreadyExists:
            pass
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """End every open write stream gracefully: the ingests keep their data until they expire."""
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
        for s in list(self._sessions.values()):
            async with s.lock:
                await self._end_stream(s)
        self._sessions.clear()
        self._writes.close()

    # -- blobs ---------------------------------------------------------------------------------

    async def stat_blob(self, digest: str) -> int | None:
        info = await self.ctr.content.exists(digest)
        return None if info is None else info.size

    def read_blob(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        return self.ctr.content.read(digest, offset=offset, size=size)

    async def delete_blob(self, digest: str) -> None:
        if await self.ctr.content.exists(digest) is None:
            raise E.blob_unknown(detail={"digest": digest})
        user = await self._user_of(digest)
        if user is not None:  # the store is the host's: never pull a blob from under an image
            raise E.BlobInUse(digest, user)
        try:
            await self.ctr.content.delete(digest)
        except errors.NotFound:
            raise E.blob_unknown(detail={"digest": digest}) from None

    async def _user_of(self, digest: str) -> str | None:
        """An image (or the untagged lease) whose content graph reaches `digest`, following the GC
        reference labels as containerd's collector does; None when nothing needs it."""
        labels = {i.digest: i.labels for i in await self.ctr.content.list()}
        roots = [(img.name, img.target.digest) for img in await self.ctr.images.list()]
        with contextlib.suppress(errors.NotFound):
            roots += [(f"the untagged manifest {d}", d) for t, d in await self.ctr.leases.list_resources(UNTAGGED_LEASE)
                      if t == "content" and d != digest]
        for name, root in roots:
            todo, seen = [root], set()
            while todo:
                d = todo.pop()
                if d == digest:
                    return name
                if d not in seen:
                    seen.add(d)
                    todo += [v for k, v in labels.get(d, {}).items() if k.startswith(GC_REF_CONTENT)]
        return None

    async def mount(self, digest: str) -> int | None:
        """Blobs are shared by the namespace, so a mount is a lookup; the blob is leased for the
        upload expiry so it survives until the manifest that needs it arrives."""
        lease = await self._hold_lease()
        await self.ctr.leases.add_resource(lease, digest)
        return await self.stat_blob(digest)

    async def _hold_lease(self) -> str:
        """A lease per expiry period shared by all mounts of the period (rather than one each)."""
        period = max(60, int(self.upload_expiry.total_seconds()))
        bucket = int(time.time()) // period
        lease_id = f"pussh-hold-{bucket}"
        with contextlib.suppress(errors.AlreadyExists):
            await self.ctr.leases.create(lease_id, expire=timedelta(seconds=2 * period))
        return lease_id

    # -- uploads -------------------------------------------------------------------------------

    @staticmethod
    def _ref(upload_id: str) -> str:
        return UPLOAD_PREFIX + upload_id

    async def start_upload(self, repo: str) -> str:
        upload_id = secrets.token_hex(16)
        ref = self._ref(upload_id)
        await self.ctr.leases.create(ref, expire=self.upload_expiry, labels={"pussh.registry.repository": repo})
        session = Session(upload_id)
        async with session.lock:
            self._sessions[upload_id] = session
            try:
                # Opening the stream creates the ingest, so the upload is known from now on.
                session.ingest = self._writer(ref, ref)
                await session.ingest.open(lock_timeout=self.lock_timeout)
            except BaseException:
                self._sessions.pop(upload_id, None)
                with contextlib.suppress(errors.ContainerdError):
                    await self.ctr.leases.delete(ref)
                raise
        return upload_id

    async def upload_offset(self, upload_id: str) -> int:
        if not _UPLOAD_ID.match(upload_id):
            raise E.blob_upload_unknown(detail={"uuid": upload_id})
        # containerd's word, not our session's: an expired upload is gone even if we still hold a
        # stream for it, and the offset it reports is what it has written.
        try:
            return (await self.ctr.content.status(self._ref(upload_id))).offset
        except errors.NotFound:
            s = self._sessions.pop(upload_id, None)
            if s is not None and s.ingest is not None:
                await s.ingest.abandon()
            raise E.blob_upload_unknown(detail={"uuid": upload_id}) from None

    def _writer(self, ref: str, lease: str) -> Writer:
        return self._writes.content.writer(ref, lease=lease, window=WRITE_WINDOW)

    @contextlib.asynccontextmanager
    async def _stream(self, upload_id: str) -> AsyncIterator[Writer]:
        """The upload's write stream, opened (or reopened after a restart or idle close) as needed;
        requests of one upload run one at a time."""
        if not _UPLOAD_ID.match(upload_id):
            raise E.blob_upload_unknown(detail={"uuid": upload_id})
        s = self._sessions.get(upload_id)
        if s is None:
            s = self._sessions.setdefault(upload_id, Session(upload_id))
        async with s.lock:
            if self._sessions.get(upload_id) is not s:  # finished while we waited
                raise E.blob_upload_unknown(detail={"uuid": upload_id})
            s.last_used = time.monotonic()
            if s.ingest is None or s.ingest.closed:
                ref = self._ref(upload_id)
                try:
                    await self.ctr.content.status(ref)
                except errors.NotFound:
                    self._sessions.pop(upload_id, None)
                    raise E.blob_upload_unknown(detail={"uuid": upload_id}) from None
                s.ingest = self._writer(ref, ref)
                await s.ingest.open(lock_timeout=self.lock_timeout)
            try:
                yield s.ingest
            except E.RegistryError:
                raise
            except BaseException:
                # A client gone mid-body or a failed write: drop the stream; containerd keeps what
                # it acknowledged, and the next request reopens the ingest at that offset.
                await s.ingest.abandon()
                raise
            finally:
                s.last_used = time.monotonic()

    async def append(self, upload_id: str, chunks: AsyncIterator[list[bytes]], start: int | None = None,
                     length: int | None = None) -> int:
        """Append a PATCH body; with `start` (from Content-Range) it must continue at the offset."""
        async with self._stream(upload_id) as ingest:
            if start is not None and start != ingest.offset:
                raise E.range_invalid(f"chunk starts at {start}, upload is at {ingest.offset}",
                                      upload_range=_range_header(ingest.offset))
            before = ingest.offset
            async for chunk in chunks:
                await ingest.write(chunk)
            offset = await ingest.flush()
        if length is not None and offset - before != length:
            raise E.size_invalid(f"chunk carried {offset - before} bytes, its range says {length}",
                                 headers={"Range": _range_header(offset)})
        return offset

    async def finish_upload(self, upload_id: str, digest: str, chunks: AsyncIterator[list[bytes]] | None = None,
                            start: int | None = None, length: int | None = None) -> int:
        """Append the last bytes (if any) and commit as `digest`; containerd verifies it."""
        ref = self._ref(upload_id)
        async with self._stream(upload_id) as ingest:
            if start is not None and start != ingest.offset:
                raise E.range_invalid(f"chunk starts at {start}, upload is at {ingest.offset}",
                                      upload_range=_range_header(ingest.offset))
            before = ingest.offset
            if chunks is not None:
                async for chunk in chunks:
                    await ingest.write(chunk)
            if length is not None and await ingest.flush() - before != length:
                raise E.size_invalid(f"chunk carried {ingest.offset - before} bytes, its range says {length}",
                                     headers={"Range": _range_header(ingest.offset)})
            try:
                await ingest.commit(expected=digest)
            except errors.AlreadyExists:
                pass  # the same blob was committed meanwhile (by another upload): that is success
            except errors.ContainerdError as err:
                # grpclib often loses the status (StreamReset), so ask containerd what happened: a
                # commit that did happen (or found the blob there) took the ingest away, and the blob
                # has the size written. A refused commit (the bytes are not `digest`, even when that
                # blob exists) leaves the ingest.
                info = await self.ctr.content.exists(digest)
                if info is None or info.size != ingest.offset or await self._ingest_exists(ref):
                    self._sessions.pop(upload_id, None)
                    await self._discard(ref)
                    raise E.digest_invalid(detail={"digest": digest, "reason": str(err)}) from None
            self._sessions.pop(upload_id, None)
        # The upload's lease now holds the blob until it expires (a manifest will claim it).
        with contextlib.suppress(errors.ContainerdError):
            await self.ctr.leases.add_resource(ref, digest)
        size = await self.stat_blob(digest)
        if size is None:  # collected in between: only possible with a tiny expiry
            raise E.blob_upload_invalid("blob vanished right after its commit")
        return size

    async def _ingest_exists(self, ref: str) -> bool:
        try:
            await self.ctr.content.status(ref)
            return True
        except errors.NotFound:
            return False

    async def cancel_upload(self, upload_id: str) -> None:
        if not _UPLOAD_ID.match(upload_id):
            raise E.blob_upload_unknown(detail={"uuid": upload_id})
        ref = self._ref(upload_id)
        s = self._sessions.pop(upload_id, None)
        if s is not None:
            async with s.lock:
                if s.ingest is not None:
                    await s.ingest.abandon()
        try:
            await self.ctr.content.status(ref)
        except errors.NotFound:
            raise E.blob_upload_unknown(detail={"uuid": upload_id}) from None
        await self._discard(ref)

    async def _discard(self, ref: str) -> None:
        for _ in range(50):  # a reset stream releases the ingest's lock a moment later
            try:
                await self.ctr.content.abort(ref)
                break
            except errors.NotFound:
                break
            except errors.ContainerdError:
                await asyncio.sleep(0.1)
        with contextlib.suppress(errors.ContainerdError):
            await self.ctr.leases.delete(ref)

    async def _end_stream(self, s: Session) -> None:
        if s.ingest is not None and not s.ingest.closed:
            try:
                await s.ingest.close()
            except (errors.ContainerdError, asyncio.CancelledError):
                pass
        s.ingest = None

    async def _sweep(self) -> None:
        """End write streams of uploads that went quiet (the ingest stays until its lease expires)."""
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = time.monotonic()
            for upload_id, s in list(self._sessions.items()):
                if now - s.last_used > SESSION_IDLE and not s.lock.locked():
                    async with s.lock:
                        await self._end_stream(s)
                        if self._sessions.get(upload_id) is s:
                            del self._sessions[upload_id]

    # -- manifests -----------------------------------------------------------------------------

    async def resolve(self, repo: str, reference: str, *, with_body: bool) -> Manifest:
        """The manifest a GET/HEAD names. A reference that is neither a tag nor a digest this store
        can hold (malformed, or sha512) names nothing here: unknown, as the spec answers a lookup."""
        if ":" in reference:
            if not (D.is_valid(reference) and reference.startswith("sha256:")):
                raise E.manifest_unknown(detail={"reference": reference})
            digest = reference
            info = await self.ctr.content.exists(digest)
            if info is None or info.size > MANIFEST_LIMIT:
                raise E.manifest_unknown(detail={"digest": digest})
            media_type = info.labels.get(LABEL_MEDIA_TYPE, "")
            body = None
            if with_body or not media_type:
                body = await self._read_manifest(digest)
                media_type = media_type or sniff_media_type(body)
                if not media_type:
                    raise E.manifest_unknown(f"{digest} is not a manifest", detail={"digest": digest})
            return Manifest(digest, media_type, info.size, body if with_body else None)
        if not R.TAG_RE.match(reference):
            raise E.manifest_unknown(detail={"reference": reference})
        name = image_name(repo, reference)
        try:
            img = await self.ctr.images.get(name)
        except errors.NotFound:
            raise E.manifest_unknown(detail={"tag": reference}) from None
        t = img.target
        body = await self._read_manifest(t.digest) if with_body else None
        if body is None and await self.ctr.content.exists(t.digest) is None:
            raise E.manifest_unknown(detail={"tag": reference})
        return Manifest(t.digest, t.media_type, t.size, body)

    async def _read_manifest(self, digest: str) -> bytes:
        try:
            return await self.ctr.content.read_all(digest, limit=MANIFEST_LIMIT)
        except (errors.NotFound, errors.FailedPrecondition):
            raise E.manifest_unknown(detail={"digest": digest}) from None

    async def put_manifest(self, repo: str, reference: str, body: bytes,
                           content_type: str | None) -> tuple[Manifest, str | None]:
        """Verify, store byte-exact, label, and tag. Children are leased while we work so GC cannot
        take them between the check and the tag; an image is tagged only once it is complete."""
        tag = None
        if ":" in reference:
            want = _manifest_digest(reference)
            digest = D.of(body)
            if digest != want:
                raise E.digest_invalid(detail={"digest": want, "actual": digest})
        else:
            tag = _tag(reference)
            digest = D.of(body)
        declared = content_type if content_type in MT.ALL_MANIFESTS else None
        try:
            parsed = M.parse(body, declared)
        except M.InvalidManifest as err:
            raise E.manifest_invalid(str(err)) from None
        for d in parsed.children() + ([parsed.subject] if parsed.subject else []):
            if not D.is_valid(d.digest):
                raise E.manifest_invalid(f"invalid digest {d.digest!r} in a descriptor", detail={"digest": d.digest})
        domain, path = R.split_domain(repo)

        async with self.ctr.leases.temporary(expire=timedelta(minutes=10)) as lease:
            # Each distinct child once, a batch at a time, stopping at the first missing one: a 4 MiB
            # manifest can list ~40000 descriptors, and one containerd call each kept the registry
            # busy for minutes.
            unique = list({d.digest: d for d in parsed.children()}.values())
            found: dict[str, int] = {}
            for i in range(0, len(unique), 32):
                batch = unique[i:i + 32]
                for d, info in zip(batch, await asyncio.gather(*(self._claim(lease, d) for d in batch))):
                    if info is None and not d.media_type.startswith(NONDISTRIBUTABLE):
                        raise E.manifest_blob_unknown(detail={"digest": d.digest})
                    if info is not None:
                        found[d.digest] = info.size
            for d in parsed.children():
                if d.digest in found and found[d.digest] != d.size:
                    raise E.manifest_invalid(f"descriptor of {d.digest} says {d.size} bytes, the blob has {found[d.digest]}",
                                             detail={"digest": d.digest})
            for d in {m.digest: m for m in parsed.manifests}.values():
                await self._check_child(d)
            await self._label_children(parsed, domain, path)

            labels = imagestore.manifest_labels(parsed, domain, path)
            if parsed.subject is not None:
                labels[LABEL_SUBJECT] = parsed.subject.digest
                labels[LABEL_ARTIFACT_TYPE] = parsed.artifact_type
            await self._write_small(f"pussh-manifest-{D.hex_of(digest)}", body, digest, labels, lease)
            # Held for the upload expiry whatever happens to the tag: containerd's pusher PUTs an
            # index's children under the image's tag one after the other, so the tag leaves each
            # child before the index that keeps it arrives; GC in between would take the child.
            await self.ctr.leases.add_resource(await self._hold_lease(), digest)

            if tag is not None:
                target = Descriptor(parsed.media_type, digest, len(body))
                await self.ctr.images.put(image_name(repo, tag), target,
                                          keep_replaced=self.ctr.namespace == DEFAULT_NAMESPACE)
            else:
                await self.ctr.leases.add_resource(UNTAGGED_LEASE, digest)
            if parsed.is_index:
                # The index keeps its children now; the untagged lease need not (see module doc).
                for child in parsed.manifests:
                    with contextlib.suppress(errors.ContainerdError):
                        await self.ctr.leases.delete_resource(UNTAGGED_LEASE, child.digest)
        return Manifest(digest, parsed.media_type, len(body)), (parsed.subject.digest if parsed.subject else None)

    async def _check_child(self, d: M.Desc) -> None:
        """An index lists manifests: each child must be one, of the kind its descriptor says, or
        containerd (and Docker) cannot read the image the index is tagged as."""
        declared = d.media_type if d.media_type in MT.ALL_MANIFESTS else None
        try:
            M.parse(await self.ctr.content.read_all(d.digest, limit=MANIFEST_LIMIT), declared)
        except (errors.ContainerdError, M.InvalidManifest) as err:
            raise E.manifest_blob_unknown(f"{d.digest} is not a manifest of type {d.media_type}: {err}"[:300],
                                          detail={"digest": d.digest}) from None

    async def _claim(self, lease: str, d: M.Desc):
        await self.ctr.leases.add_resource(lease, d.digest)
        return await self.ctr.content.exists(d.digest)

    async def _label_children(self, parsed: M.Parsed, domain: str, path: str) -> None:
        """Layers get their diffID and every child the distribution source, as containerd's own
        pull sets them (ctrd.imagestore, shared with pussh's direct path)."""
        config = None
        if parsed.config is not None:
            with contextlib.suppress(errors.ContainerdError):
                config = await self.ctr.content.read_all(parsed.config.digest, limit=MANIFEST_LIMIT)

        async def label(digest: str, diff_id: str | None) -> None:
            try:
                info = await self.ctr.content.info(digest)
            except errors.NotFound:
                return
            want = imagestore.missing_labels(info.labels, domain, path, diff_id)
            if want:
                await self.ctr.content.set_labels(digest, want)

        jobs = list(imagestore.child_labels(parsed, config).items())  # each distinct blob once
        for i in range(0, len(jobs), 32):
            await asyncio.gather(*(label(d, diff_id) for d, diff_id in jobs[i:i + 32]))

    async def _write_small(self, ref: str, body: bytes, digest: str, labels: dict[str, str], lease: str) -> None:
        ingest = self._writer(ref, lease)
        try:
            await ingest.open(expected=digest, lock_timeout=self.lock_timeout)
        except errors.AlreadyExists:
            await self.ctr.leases.add_resource(lease, digest)
            await self.ctr.content.set_labels(digest, labels)
            return
        try:
            if not ingest.holds(digest, len(body)):
                # Anything else under this ref is a stale partial write: start it over.
                ingest.rewind()
                await ingest.write(body)
            # Otherwise containerd still has these bytes (deleted from the namespace and not yet
            # collected, or another namespace's): the commit alone adopts them, labels and all.
            await ingest.commit(labels)
        except errors.AlreadyExists:
            await self.ctr.content.set_labels(digest, labels)
        except BaseException:
            await ingest.abandon()
            raise

    async def delete_manifest(self, repo: str, reference: str) -> None:
        if ":" in reference:
            digest = _manifest_digest(reference)  # malformed: 400, as for a PUT
            await self.resolve(repo, digest, with_body=False)  # MANIFEST_UNKNOWN unless a manifest
            images = await self.ctr.images.list()
            for img in images:
                parsed = repository_of(img.name)
                if img.target.digest == digest and parsed and image_name(repo, parsed[1]) == img.name:
                    with contextlib.suppress(errors.NotFound):
                        await self.ctr.images.delete(img.name)
            # Other repositories' tags, or an index, may still need it: then only this repository lets go.
            with contextlib.suppress(errors.ContainerdError):
                await self.ctr.leases.delete_resource(UNTAGGED_LEASE, digest)
            if await self._user_of(digest) is None:
                with contextlib.suppress(errors.NotFound):
                    await self.ctr.content.delete(digest)
            return
        try:
            await self.ctr.images.delete(image_name(repo, _tag(reference)))
        except errors.NotFound:
            raise E.manifest_unknown(detail={"tag": reference}) from None

    # -- tags, catalog, referrers --------------------------------------------------------------

    async def tags(self, repo: str) -> list[str]:
        domain, path = R.split_domain(repo)
        prefix = f"{domain}/{path}:"
        out = []
        for img in await self.ctr.images.list():
            if img.name.startswith(prefix):
                tag = img.name[len(prefix):]
                if R.TAG_RE.match(tag):
                    out.append(tag)
        return sorted(set(out))

    async def repositories(self) -> list[str]:
        repos = set()
        for img in await self.ctr.images.list():
            parsed = repository_of(img.name)
            if parsed:
                repos.add(parsed[0])
        return sorted(repos)

    async def referrers(self, digest: str, artifact_type: str | None) -> list[dict]:
        infos = await self.ctr.content.list(f'labels."{LABEL_SUBJECT}"=="{digest}"')
        out = []
        for info in sorted(infos, key=lambda i: i.digest):
            if artifact_type and info.labels.get(LABEL_ARTIFACT_TYPE, "") != artifact_type:
                continue
            try:
                parsed = M.parse(await self.ctr.content.read_all(info.digest, limit=MANIFEST_LIMIT))
            except (M.InvalidManifest, errors.ContainerdError):
                continue  # deleted meanwhile
            desc: dict = {"mediaType": parsed.media_type, "digest": info.digest, "size": info.size}
            if parsed.artifact_type:
                desc["artifactType"] = parsed.artifact_type
            annotations = parsed.raw.get("annotations")
            if isinstance(annotations, dict) and annotations:
                desc["annotations"] = annotations
            out.append(desc)
        return out


def _range_header(offset: int) -> str:
    # The spec's upload Range is inclusive; an empty upload reports 0-0 (as distribution does).
    return f"0-{max(offset - 1, 0)}"


def _tag(reference: str) -> str:
    if not R.TAG_RE.match(reference):
        raise E.manifest_invalid(f"invalid tag {reference!r}", detail={"tag": reference})
    return reference


def _manifest_digest(reference: str) -> str:
    try:
        D.validate(reference)
    except D.InvalidDigest as err:
        raise E.digest_invalid(str(err), detail={"digest": reference}) from None
    if not reference.startswith("sha256:"):
        raise E.UnsupportedDigest(reference)
    return reference
