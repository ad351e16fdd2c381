"""pussh against `docker save | ssh docker load` and a registry over `ssh -L`, side by side in one run.

    sudo .venv/bin/python -m benchmarks.run_basic [--quick] [--runs N] [--shaping unshaped,shaped]

Scenarios (each on one server, unshaped and at 200 Mbit/s with 20 ms RTT):
  S1  first push of bench/app:1 (busybox + 150/100/50 MB random layers) to an emptied server
  S2  the same push again
  S3  bench/app:1-v2 (only the last ~50 MB layer differs) with bench/app:1 on the server
Before each S1 the server is reset for that method: bench images removed, containerd garbage
collected (the pussh registry image stays: it is sent once, not measured), the distribution
registry restarted on empty storage. Methods are interleaved within each run.
Raw results: benchmarks/out/results-<UTC>.json (+ out/latest.json); then `python -m benchmarks.report`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed import build_test_image_pair

from .bed import Bed
from .measure import Probe
from .methods import METHODS

OUT = Path(__file__).resolve().parent / "out"
PREFIX = "basic"
IMAGE, IMAGE_V2 = "bench/app:1", "bench/app:1-v2"
SIZES_MB = [150, 100, 50]
SHAPINGS = {"unshaped": (None, None), "shaped": ("200mbit", "10ms")}
SCENARIOS = {
    "S1": ("first push", IMAGE),
    "S2": ("same push again", IMAGE),
    "S3": ("v2 (last layer changed) after v1", IMAGE_V2),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def version(argv: list[str]) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (cp.stdout or cp.stderr).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"? ({e})"


def machine() -> dict:
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), "?"),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "docker": version(["docker", "--version"]),
        "containerd": version(["containerd", "--version"]),
        "openssh": version(["ssh", "-V"]),
        "python": sys.version.split()[0],
        "docker_registry": version(["dpkg-query", "-W", "-f", "${Package} ${Version}", "docker-registry"]),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def wait_gc(bed: Bed, remote, timeout: float = 10) -> int | None:
    """After the images are gone, wait until the server's content count stops dropping (containerd's
    GC runs shortly after an image delete)."""
    last, stable, deadline = None, 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = bed.content_count(remote)
        stable = stable + 1 if n == last else 0
        if stable >= 3:
            break
        last = n
        time.sleep(0.3)
    return last


def content_digests(bed: Bed, remote) -> set[str]:
    return set(bed.remote_run(remote, "ctr", "-n", "moby", "content", "ls", "-q").stdout.decode().split())


def purge(bed: Bed, remote, baseline: set[str]) -> int:
    """After the method's reset (images removed): drop every lease on the server and every blob that was
    not there before the first push (the baseline: pussh's registry image). Needed because pussh's
    registry keeps uploaded blobs under its upload leases (registry/storage.py) until they expire, so
    `docker rmi` + GC alone leaves them and the next "first push" would send nothing.
    Returns the blobs removed here (beyond what GC took)."""
    for lid in bed.remote_run(remote, "ctr", "-n", "moby", "leases", "ls", "-q").stdout.decode().split():
        bed.remote_run(remote, "ctr", "-n", "moby", "leases", "rm", "--sync", lid, check=False)
    extra = sorted(content_digests(bed, remote) - baseline)
    if extra:
        bed.remote_run(remote, "ctr", "-n", "moby", "content", "rm", *extra, check=False)
    return len(extra)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="S1-S3, 1 run per cell")
    p.add_argument("--runs", type=int, default=None, help="runs per cell (default 3; 1 with --quick)")
    p.add_argument("--shaping", default="unshaped,shaped")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--sizes", default=",".join(map(str, SIZES_MB)), help="MB per data layer")
    args = p.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    shapings = [s for s in args.shaping.split(",") if s]
    sizes = [float(x) for x in args.sizes.split(",")]
    if os.geteuid() != 0:
        sys.exit("run as root: sudo .venv/bin/python -m benchmarks.run_basic")
    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_path = OUT / f"{PREFIX}-{stamp}.json"
    result: dict = {"command": shlex.join(["sudo", ".venv/bin/python", "-m", "benchmarks.run_basic", *sys.argv[1:]]),
                    "started": stamp, "machine": machine(), "runs": runs, "sizes_mb": sizes,
                    "shapings": {k: SHAPINGS[k] for k in shapings},
                    "scenarios": {k: v[0] for k, v in SCENARIOS.items()}, "methods": {}, "cells": []}

    def save() -> None:
        result["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        out_path.write_text(json.dumps(result, indent=1))
        (OUT / f"{PREFIX}-latest.json").write_text(json.dumps(result, indent=1))

    workdir = Path(tempfile.mkdtemp(prefix="pussh-bench-"))
    bed = Bed(workdir, log=log)
    methods = []
    try:
        local = bed.local("containerd")
        remote = bed.remote("a", "containerd")
        log("registry image")
        bed.registry_image(local)
        log(f"building {IMAGE} and {IMAGE_V2} ({sizes} MB + busybox)")
        build_test_image_pair(local, IMAGE, sizes)
        result["image_blobs"] = {IMAGE: bed.image_blobs(local, IMAGE), IMAGE_V2: bed.image_blobs(local, IMAGE_V2)}
        for name in args.methods.split(","):
            m = METHODS[name](bed, workdir)
            log(f"prepare {name}")
            m.prepare(remote)
            methods.append(m)
            result["methods"][name] = {"label": m.label, "templates": m.templates()}
        baseline = content_digests(bed, remote)
        result["server_baseline_blobs"] = len(baseline)
        save()
        for shaping in shapings:
            rate, delay = SHAPINGS[shaping]
            bed.shape([remote], rate, delay)
            for run in range(runs):
                for m in methods:
                    for sc, (_, image) in SCENARIOS.items():
                        if sc == "S1":
                            m.reset(local, [remote])
                            wait_gc(bed, remote)
                            purged = purge(bed, remote, baseline)
                            left = len(content_digests(bed, remote) - baseline)
                        probe = Probe(lambda: bed.link_bytes([remote]), bed.daemon_pids(remote),
                                      registry_pids=m.registry_pids([remote]), registry_comm=m.registry_comm,
                                      netns=[bed.netns_inode(remote)], delayers=bed.delayer_pids(remote)).start()
                        try:
                            o = m.push(local, image, [remote])
                        finally:
                            pr = probe.stop()
                        cell = {"shaping": shaping, "run": run, "method": m.name, "scenario": sc, "image": image,
                                "ok": o.ok, "error": o.error, "seconds": round(o.seconds, 3),
                                "link_tx": pr.link_tx, "link_rx": pr.link_rx, "link_bytes": pr.link_tx + pr.link_rx,
                                "client_cpu": round(o.client_cpu, 3), "client_rss": o.client_rss,
                                "server_registry_cpu": pr.registry_cpu, "server_registry_rss": pr.registry_rss,
                                "server_daemons_cpu": pr.daemons_cpu, "delayer_cpu": pr.delayer_cpu,
                                "machine_busy": pr.machine_busy, "loadavg": pr.loadavg,
                                "blobs_left_after_reset": left if sc == "S1" else None,
                                "blobs_purged_at_reset": purged if sc == "S1" else None,
                                "commands": o.commands, "details": o.details}
                        result["cells"].append(cell)
                        log(f"{shaping} run {run + 1}/{runs} {m.name:9} {sc}: {o.seconds:7.2f}s "
                            f"{(pr.link_tx + pr.link_rx) / 1e6:8.2f} MB link, cpu {o.client_cpu:5.2f}s, "
                            f"rss {o.client_rss / 2**20:6.1f} MiB {'ok' if o.ok else 'FAILED: ' + o.error[:300]}")
                        save()
            bed.shape([remote], None, None)
    finally:
        for m in methods:
            try:
                m.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stopping {m.name}: {e}")
        bed.close()
        save()
    summary = {}
    for c in result["cells"]:
        summary.setdefault((c["shaping"], c["scenario"], c["method"]), []).append(c["seconds"])
    for k, v in summary.items():
        log(f"{' '.join(k)}: median {statistics.median(v):.2f}s")
    log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
