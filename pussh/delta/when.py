"""Whether a layer's delta is worth the helper: the seconds it saves on the link against what the
helper costs (its start, and reading, chunking and rebuilding the layer on both sides)."""
from __future__ import annotations

STARTUP_SECONDS = 0.3  # the helper's start (~50 ms) and its base listing's round trips, rounded up
DELTA_RATE = 100e6  # bytes/s through the chunking and the rebuild (2 shared cores, measured ~150)
ASSUMED_LINK_RATE = 100e6 / 8  # until bytes have crossed: the 20-50 Mbit uplinks this is for, doubled
MIN_MEASURED = 1 << 20  # bytes that must have crossed before their rate counts
# Once JUDGE_AFTER of a layer (and JUDGE_FRACTION of its blob) has been read, a base sharing less
# than MIN_SHARED of it ends the delta: that layer goes whole (its compressed blob, rather than all
# of it compressed again here). The fraction: new files may come first in the tar.
JUDGE_AFTER = 16 << 20
JUDGE_FRACTION = 0.3
MIN_SHARED = 0.5


def link_rate(bytes_sent: int, seconds: float) -> float:
    """The rate seen so far, or the assumed one before enough has crossed."""
    if bytes_sent >= MIN_MEASURED and seconds > 0:
        return bytes_sent / seconds
    return ASSUMED_LINK_RATE


def worth_it(size: int, rate: float, forced: bool | None) -> bool:
    """`forced`: --delta (True) or --no-delta (False); None decides by the estimate. The saving
    counted is the whole layer's time on the link: what the base shares is known only once the
    local layer has been read, and a delta that shares nothing costs about the full blob."""
    if forced is not None:
        return forced
    return size / rate > STARTUP_SECONDS + size / DELTA_RATE


def too_little_shared(blob_read: int, blob_size: int, seen: int, shared: int) -> bool:
    """Whether a delta under way should give up: enough of the layer read, too little of it shared."""
    return seen >= JUDGE_AFTER and blob_read >= JUDGE_FRACTION * blob_size and shared < MIN_SHARED * seen
