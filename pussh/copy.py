"""One copy function for every destination, as containerd's content copy walks an image: what the
destination lacks, the missing blobs copied (several in flight, each resuming where the server
stands), the manifests bottom-up, the tag last, so an interrupted push never leaves a tag on an
incomplete image."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import ctrd
from ctrd.content import Source  # a provider: the blob's bytes from an offset
from oci.manifest import Desc

from .errors import LocalReadError
from .plan import Plan
from .progress import UI, human_bytes
from .source import ImageSource

if TYPE_CHECKING:
    from .options import HostResult


class Destination(Protocol):
    via: str  # the path's name, as --via and the JSON result spell it

    async def missing(self, blobs: list[Desc]) -> list[Desc]: ...
    # returns the offset it resumed from, or None when another writer stored the blob meanwhile
    async def write(self, desc: Desc, source: Source) -> int | None: ...
    async def put_manifest(self, desc: Desc, body: bytes) -> None: ...
    async def tag(self, desc: Desc, body: bytes) -> None: ...  # stores the root too


async def copy_image(source: ImageSource, dest: Destination, plan: Plan, *, jobs: int, ui: UI, result: "HostResult",
                     label: str, check_space: Callable[[int], Awaitable[None]] | None = None) -> None:
    missing = await dest.missing(plan.blobs)
    lacking = {b.digest for b in missing}
    result.blobs_skipped = result.bytes_skipped = 0  # counted anew by each attempt
    for b in plan.blobs:
        if b.digest not in lacking and b.digest not in result.sent:  # (sent by an earlier attempt)
            result.blobs_skipped += 1
            result.bytes_skipped += b.size
    needed = sum(b.size for b in missing)
    ui.debug(f"{label}: {len(missing)} of {len(plan.blobs)} blobs to send ({human_bytes(needed)}) via {dest.via}")
    if check_space is not None:
        await check_space(needed)

    sem = asyncio.Semaphore(max(jobs, 1))

    async def send(b: Desc) -> None:
        async with sem:
            bar = ui.bar(f"{label} {b.digest[7:19]}", b.size)
            try:
                resumed = await dest.write(b, _reader(source.opener(b.digest), bar.advance))
            except BaseException:
                bar.discard()
                raise
            bar.finish()
            if resumed is None:  # a concurrent push stored it first: nothing of ours crossed
                result.blobs_skipped += 1
                result.bytes_skipped += b.size
                return
            result.blobs_sent += 1
            result.bytes_sent += b.size - resumed
            result.bytes_resumed += resumed
            result.sent.append(b.digest)

    try:
        async with asyncio.TaskGroup() as tg:
            for b in sorted(missing, key=lambda b: -b.size):  # the biggest first: they set the pace
                tg.create_task(send(b))
    except BaseExceptionGroup as group:
        raise _first(group) from None
    for desc, body in plan.manifests[:-1]:
        await dest.put_manifest(desc, body)
    await dest.tag(*plan.manifests[-1])


def _reader(source: Source, progress: Callable[[int], None]) -> Source:
    """The local blob from an offset, counted on the bar; a local read failure is told apart from
    the destination's."""
    counted = 0  # what the bar shows; a retried write starts again from the server's offset

    async def read(offset: int) -> AsyncIterator[bytes]:
        nonlocal counted
        progress(offset - counted)
        counted = offset
        try:
            async for chunk in source(offset):
                progress(len(chunk))
                counted += len(chunk)
                yield chunk
        except ctrd.ContainerdError as err:
            raise LocalReadError(f"reading the local image failed: {err}") from err
    return read


def _first(group: BaseExceptionGroup) -> BaseException:
    """The failure that ended the copy (the others are the cancellations it caused)."""
    for err in group.exceptions:
        if isinstance(err, BaseExceptionGroup):
            return _first(err)
        if not isinstance(err, asyncio.CancelledError):
            return err
    return group.exceptions[0]


def account_dry_run(plan: Plan, lacking: list[Desc], *, ui: UI, result: "HostResult", label: str, via: str) -> None:
    """--dry-run: what copy_image would send (`lacking`: the blobs the destination lacks), counted
    into `result` as a push counts what it sent, each blob on a line; nothing is written."""
    lack = {b.digest for b in lacking}
    for b in sorted(plan.blobs, key=lambda b: -b.size):
        if b.digest in lack:
            result.blobs_sent += 1
            result.bytes_sent += b.size
            result.sent.append(b.digest)
            ui.line(f"{label}: would send {b.digest} ({human_bytes(b.size)}) via {via}")
        else:
            result.blobs_skipped += 1
            result.bytes_skipped += b.size
    ui.line(f"{label}: then {len(plan.manifests)} manifest(s) and the tag {result.image} -> {plan.root.digest}")
