"""Delta into a classic-store Docker (docker load): the base of a missing layer is the layer of the
tag's current image on the server at the same position (the same diffID anywhere in it first: then
every chunk is shared), read from Docker's unpacked layer directory. The rebuilt tar is the layer
exactly as `docker save` gives it locally, so `docker load` makes the same image ID: exact, and on
by default when it is worth it."""
from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from oci import digest as D
from oci.manifest import Desc

from ..progress import UI, human_bytes
from ..remote import Server
from ..source import ImageSource
from ..ssh import Connection
from . import when
from .client import DeltaFailed, LayerDelta, Session

if TYPE_CHECKING:
    from ..options import HostResult


def bases(diff_ids: list[str], missing: list[int], server_diff_ids: list[str]) -> dict[int, int]:
    """For each missing layer position, the position of its base in the server's image."""
    if not server_diff_ids:
        return {}
    out = {}
    for i in missing:
        if diff_ids[i] in server_diff_ids:
            out[i] = server_diff_ids.index(diff_ids[i])
        else:
            out[i] = min(i, len(server_diff_ids) - 1)
    return out


def worth_trying(layers: list[Desc], diff_ids: list[str], missing: list[int], server_diff_ids: list[str],
                 forced: bool | None) -> dict[int, int]:
    """The missing layers worth a delta (position -> its base's position), before any helper starts:
    a push whose missing layers are all small starts none."""
    return {i: j for i, j in bases(diff_ids, missing, server_diff_ids).items()
            if when.worth_it(layers[i].size, when.ASSUMED_LINK_RATE, forced)}


@contextlib.asynccontextmanager
async def session(conn: Connection, server: Server):
    """The helper for one load, closed (and its directory gone) on every way out."""
    s = await Session.open(conn, server.sudo, server.python, f"{server.docker_root}/tmp")
    try:
        yield s
    finally:
        await s.close()


async def rebuild(s: Session, conn: Connection, source: ImageSource, layers: list[Desc], diff_ids: list[str],
                  tries: dict[int, int], server_chains: list[str], docker_root: str, forced: bool | None, ui: UI,
                  result: "HostResult") -> dict[int, int]:
    """Try the delta for each layer of `tries` (position -> its base's, from worth_trying) that is
    still worth it at the rate seen; returns position -> rebuilt size of those the helper rebuilt
    and verified. The others are sent whole; result.delta records every try."""
    done: dict[int, int] = {}
    t0 = time.monotonic()
    for i, j in sorted(tries.items(), key=lambda p: -layers[p[0]].size):
        layer = layers[i]
        rate = when.link_rate(result.bytes_sent, time.monotonic() - t0)
        if not when.worth_it(layer.size, rate, forced):
            continue
        record = LayerDelta(digest=layer.digest, diff_id=diff_ids[i], base=server_chains[j])
        result.delta.append(record.to_json())
        bar = ui.bar(f"{conn.label} delta {layer.digest[7:19]}", layer.size)
        try:
            await s.layer({"chain": D.hex_of(server_chains[j]), "docker_root": docker_root},
                          source.opener(layer.digest), layer, diff_ids[i], D.hex_of(diff_ids[i]), record,
                          bar.advance)
        except DeltaFailed as err:
            bar.discard()
            record.error = str(err)
            ui.line(f"{conn.label}: delta of {layer.digest[:19]} failed ({err}); sending it whole")
        else:
            bar.finish("rebuilt")
            record.rebuilt = True
            done[i] = record.size
            ui.debug(f"{conn.label}: {layer.digest[:19]} rebuilt on the server from {human_bytes(record.bytes_sent)} "
                     f"({human_bytes(record.shared)} of {human_bytes(record.size)} from its base)")
        result.bytes_sent += record.bytes_sent
        result.delta[-1] = record.to_json()
    return done
