"""What a push is asked to do (PushOptions) and what it did (HostResult, the JSON result): kept
apart from push.py so that the command line builds and prints them before (and without) the
containerd client's modules."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from oci.manifest import Platform

from .progress import human_bytes
from .ssh import SSHOptions


@dataclass
class PushOptions:
    registry_image: str
    platforms: list[Platform] = field(default_factory=list)  # empty: the server's platform
    jobs: int = 4
    remote_docker: str | None = None
    remote_containerd_socket: str | None = None
    timeout: float = 30.0
    ssh: SSHOptions = field(default_factory=SSHOptions)
    via: str = "auto"
    namespace: str | None = None  # the server's containerd namespace (direct path); None: found out
    snapshotter: str | None = None  # for unpacking outside Docker's namespace; None: overlayfs
    dry_run: bool = False  # connect and work out what is missing; send and change nothing
    transport: str = "auto"  # forward (sshd's channels), stdio (a relay command's), auto: forward where sshd allows
    delta: bool | None = None  # --delta / --no-delta; None: a layer's delta where it is exact and worth it


@dataclass
class HostResult:
    host: str
    image: str
    ok: bool = False
    error: str | None = None
    via: str | None = None  # the path taken: containerd, registry or load
    transport: str | None = None  # how its bytes travel: forward (sshd's), stdio (a relay command's), exec
    blobs_sent: int = 0
    blobs_skipped: int = 0
    bytes_sent: int = 0
    bytes_skipped: int = 0
    bytes_resumed: int = 0  # of the blobs sent, bytes the server already had from an interrupted push
    namespace: str | None = None  # the direct path's containerd namespace
    unpacked: list[str] = field(default_factory=list)  # chain IDs of the layers this push unpacked
    seconds: float = 0.0
    platforms: list[str] = field(default_factory=list)
    digest: str | None = None
    sent: list[str] = field(default_factory=list)  # digests of the blobs sent
    exit_code: int = 0
    retries: int = 0  # attempts after a fault that passed (or did not, when ok is false)
    dry_run: bool = False  # blobs_sent, bytes_sent and sent are then what a push would send
    delta: list[dict] = field(default_factory=list)  # each layer a delta was tried for (pussh.delta.client.LayerDelta)

    def summary(self) -> str:
        if not self.ok:
            return f"{self.host}: FAILED: {self.error}"
        if self.dry_run:
            return (f"{self.host}: dry run: {self.image} ({', '.join(self.platforms) or '?'}) via {self.via}: "
                    f"would send {self.blobs_sent} blobs ({human_bytes(self.bytes_sent)}), "
                    f"{self.blobs_skipped} already there ({human_bytes(self.bytes_skipped)}); nothing sent")
        rate = self.bytes_sent / self.seconds if self.seconds > 0 else 0
        return (f"{self.host}: pushed {self.image} ({', '.join(self.platforms) or '?'}) via {self.via}: "
                f"{self.blobs_sent} blobs sent ({human_bytes(self.bytes_sent)}), "
                f"{self.blobs_skipped} skipped ({human_bytes(self.bytes_skipped)}), "
                + (f"{len(self.unpacked)} layers unpacked, " if self.unpacked else "")
                + _delta_summary(self.delta, self.digest)
                + f"{self.seconds:.1f}s, {human_bytes(rate)}/s")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def _delta_summary(tried: list[dict], digest: str | None) -> str:
    rebuilt = [d for d in tried if d["rebuilt"]]
    if not tried:
        return ""
    inexact = [d for d in rebuilt if not d["exact"]]
    return (f"{len(rebuilt)} of {len(tried)} layers rebuilt from a delta "
            f"({human_bytes(sum(d['bytes_sent'] for d in rebuilt))} for {human_bytes(sum(d['size'] for d in rebuilt))}"
            + (f"; {len(inexact)} stored as the server's own blob, so the server's image is {digest}"
               if inexact else "")
            + "), ")
