"""Registry upload throughput against raw containerd gRPC writes, in the same run, and the
registry's peak RSS with concurrent large uploads. Not a test: it prints numbers.

    .venv/bin/python benchmarks/registry_throughput.py [--size-mb 500] [--runs 3]
        [--concurrent 4] [--concurrent-size-mb 1024] [--json OUT]

Starts its own containerd (under a temp dir) and the registry as its real process
(`python -m registry`), then for each run:
- raw: `ctrd` content.write_blob of a SIZE blob straight into containerd (8 MiB messages);
- monolithic: POST, then one PUT ?digest= carrying the whole body (containerd's own pusher);
- streamed: POST, one PATCH without Content-Range (chunked), then an empty PUT (Docker classic);
each blob is new random data (an existing blob would be skipped). Then CONCURRENT uploads of
CONCURRENT_SIZE each at once, reading the registry's VmHWM (peak RSS) from /proc.
Medians are reported; these 2-core machines vary by +-15 % run to run.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ctrd import Containerd  # noqa: E402

MiB = 1 << 20
SEND = 1 * MiB  # client-side body pieces


def start_containerd(d: Path) -> tuple[subprocess.Popen, str]:
    sock = str(d / "containerd.sock")
    (d / "config.toml").write_text(
        f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[plugins."io.containerd.internal.v1.opt"]\n  path = "{d}/opt"\n')
    proc = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=open(d / "containerd.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(200):
        if os.path.exists(sock):
            return proc, sock
        time.sleep(0.05)
    raise RuntimeError("containerd did not start")


def start_registry(sock: str, d: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "registry", "--listen", "127.0.0.1:0", "--containerd", sock,
                             "--namespace", "bench", "--log-level", "warning"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=open(d / "registry.err", "wb"), text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(f"registry did not start: {(d / 'registry.err').read_text()}")
    return proc, line.rsplit(" ", 1)[1].strip()


class Blob:
    """`size` random bytes, a fresh prefix each time so every upload is a new blob."""

    def __init__(self, base: bytes, tag: int) -> None:
        self.prefix = tag.to_bytes(8, "big") + os.urandom(24)
        self.base = memoryview(base)
        self.size = len(self.prefix) + len(base)
        h = hashlib.sha256(self.prefix)
        h.update(self.base)
        self.digest = "sha256:" + h.hexdigest()

    async def chunks(self, offset: int = 0, piece: int = SEND):
        if offset < len(self.prefix):
            yield self.prefix[offset:]
            offset = len(self.prefix)
        for i in range(offset - len(self.prefix), len(self.base), piece):
            yield bytes(self.base[i:i + piece])


async def raw_write(sock: str, blob: Blob) -> float:
    async with Containerd(sock, "bench") as c:
        await c.ensure_namespace()
        async with c.leases.temporary() as lease:
            t0 = time.perf_counter()
            await c.content.write_blob(f"bench-raw-{blob.digest[7:19]}", lambda off: blob.chunks(off, 8 * MiB),
                                       expected=blob.digest, total=blob.size, lease=lease)
            return time.perf_counter() - t0


async def upload(session: aiohttp.ClientSession, url: str, blob: Blob, mode: str) -> float:
    t0 = time.perf_counter()
    async with session.post(f"{url}/v2/bench/blobs/uploads/") as r:
        assert r.status == 202, await r.text()
        loc = r.headers["Location"]
    if mode == "monolithic":
        async with session.put(f"{url}{loc}?digest={blob.digest}", data=blob.chunks(),
                               headers={"Content-Length": str(blob.size)}) as r:
            assert r.status == 201, await r.text()
    else:
        async with session.patch(f"{url}{loc}", data=blob.chunks()) as r:
            assert r.status == 202, await r.text()
            loc = r.headers["Location"]
        async with session.put(f"{url}{loc}?digest={blob.digest}") as r:
            assert r.status == 201, await r.text()
    return time.perf_counter() - t0


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def main(args) -> dict:
    out: dict = {"size_mb": args.size_mb, "runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="regbench-") as tmp:
        d = Path(tmp)
        ctd, sock = start_containerd(d)
        reg = None
        try:
            reg, url = start_registry(sock, d)
            base = os.urandom(args.size_mb * MiB)
            times: dict[str, list[float]] = {"raw": [], "monolithic": [], "streamed": []}
            tag = 0
            timeout = aiohttp.ClientTimeout(total=None)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for run in range(args.runs):
                    for mode in times:
                        tag += 1
                        blob = Blob(base, tag)
                        if mode == "raw":
                            t = await raw_write(sock, blob)
                        else:
                            t = await upload(session, url, blob, mode)
                        times[mode].append(t)
                        print(f"run {run + 1} {mode:>10}: {blob.size / MiB / t:7.1f} MiB/s", flush=True)
            size = args.size_mb * MiB
            for mode, ts in times.items():
                out[f"{mode}_mib_s"] = round(size / MiB / statistics.median(ts), 1)
            for mode in ("monolithic", "streamed"):
                out[f"{mode}_vs_raw"] = round(out[f"{mode}_mib_s"] / out["raw_mib_s"], 3)
            del base

            if not args.concurrent:
                return out
            # Peak RSS: CONCURRENT uploads of CONCURRENT_SIZE at once (streamed, as Docker sends).
            big = os.urandom(args.concurrent_size_mb * MiB)
            blobs = [Blob(big, 1000 + i) for i in range(args.concurrent)]
            idle_rss = vm_rss(reg.pid)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                t0 = time.perf_counter()
                await asyncio.gather(*(upload(session, url, b, "streamed" if i % 2 else "monolithic")
                                       for i, b in enumerate(blobs)))
                elapsed = time.perf_counter() - t0
            out["concurrent"] = args.concurrent
            out["concurrent_size_mb"] = args.concurrent_size_mb
            out["concurrent_total_mib_s"] = round(args.concurrent * args.concurrent_size_mb / elapsed, 1)
            out["registry_idle_rss_mb"] = round(idle_rss / MiB, 1)
            out["registry_peak_rss_mb"] = round(vm_hwm(reg.pid) / MiB, 1)
        finally:
            if reg is not None:
                reg.terminate()
                reg.wait(30)
            ctd.terminate()
            try:
                ctd.wait(30)
            except subprocess.TimeoutExpired:
                ctd.kill()
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--concurrent-size-mb", type=int, default=1024)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    result = asyncio.run(main(args))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
