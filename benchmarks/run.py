"""pussh (`--via auto`: direct for root; and `--via registry`) against `docker save | ssh | docker load`
and against the registry path (`docker push` through `ssh -L` + `docker pull`), side by side, on the
real two-host test bed; to a Kubernetes-like node against `docker save | ssh | ctr images import`. Writes the raw measurements
to benchmarks/out/<time>.json, then benchmarks/RESULTS.md and benchmarks/results.png from them.

    sudo .venv/bin/python -m benchmarks.run                # everything: S1-S8, K, web, data; 3 runs, unshaped + 200 Mbit/s 20 ms RTT
    sudo .venv/bin/python -m benchmarks.run --quick        # S1-S3, K1-K2, R1-R3 on web; 1 run; both shapes
    sudo .venv/bin/python -m benchmarks.run --scenarios S1,S3 --runs 5 --shapes shaped
    sudo .venv/bin/python -m benchmarks.run --quick --runs 1 --scale 0.05 --no-report   # smoke test
    .venv/bin/python -m benchmarks.report benchmarks/out/<time>.json                # tables + chart again

Scenarios: S1 first push of a ~320 MB 4-layer image; S2 the same again; S3 only the last ~50 MB layer
changed; S4 a 20-layer image; S5 a single 1 GiB layer; S6.1-3 = S1-S3 to a server with Docker's classic
store; S7.1-3 = S1-S3 from a client with Docker's classic store; S8 S1 to three servers at once.
K1/K2: S1/S3 to a Kubernetes-like node (containerd with CRI, no Docker): pussh against
`docker save | ssh node ctr -n k8s.io images import -`, with the time until the image is runnable.
R1-R4 on two realistic images (benchmarks/realimages.py: `web`, `data`; scenario ids R1.web ...):
R1 first push to a server that has the Debian base; R2 the application code changed; R3 one dependency
added (the dependency layer rebuilt); R4 first push to an empty server.
S9.1/S9.2: one 300 MB layer of 3000 files with 1 % of them rewritten or added, to a containerd-store
and a classic-store server that have the previous tag (sub-layer delta: pussh-delta is `pussh --delta`;
plain pussh takes the delta by default only where it is exact: to the classic store, and S9.3, from a
classic-store client, whose layers pussh compresses itself, to a containerd store). Its link shapes are the issue's:
`--scenarios S9 --shapes shaped --rate 50mbit --delay 10ms`, then `--rate 200mbit`.
Before each first push (S1, S4, S5, S6.1, S7.1, S8, K1, R1, R4) the servers are reset: every bench
image removed (and containerd's garbage collection waited for), the distribution registry emptied,
pussh's layer cache emptied; for R1 the base image is then pushed (untimed) by the same method.
Methods are interleaved run by run, in rotating order; each scenario runs the methods that apply to
its server (save-load, registry, pussh-registry: servers with Docker; ctr-import: the node).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import realimages
from .bed import CACHE, REPO, Bed
from .measure import Probe, children_of, kill_all, run_client
from .methods import METHODS, Method, Pussh

OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class ImageSpec:
    family: str
    sizes_mb: tuple[float, ...]
    text_mb: float
    variants: int  # tags :1 .. :variants (only the last layer differs)

    def tag(self, v: int) -> str:
        return f"bench/{self.family}:{v}"


@dataclass(frozen=True)
class FilesSpec:
    """S9's image: one big layer of many files (testbed.images.build_files_images); tag v+1 is
    variant v, each ~`changed` of the files rewritten or added from the one before."""
    family: str
    total_mb: float
    files: int
    changed: float
    variants: int = 2

    def tag(self, v: int) -> str:
        return f"bench/{self.family}:{v}"

    def changed_bytes(self, scale: float) -> int:
        """The data that differs from one tag to the next: the files rewritten and added."""
        size = int(self.total_mb * scale * (1 << 20) / self.files)
        return 2 * max(1, round(self.files * self.changed / 2)) * size


IMAGES = {
    "app4": ImageSpec("app4", (150, 100, 50), 3, 2),       # busybox + 3 layers, ~320 MB
    "app20": ImageSpec("app20", (15,) * 19, 1, 1),         # busybox + 19 layers, ~310 MB
    "app1g": ImageSpec("app1g", (1024,), 0, 1),             # busybox + one 1 GiB layer
    **realimages.REAL,                                       # web, data: tags base, 1, app2, dep2
    "files300": FilesSpec("files300", 300, 3000, 0.01),      # S9: 3000 files of 100 KiB, 1 % changed
}


@dataclass(frozen=True)
class Group:
    """Scenarios measured one after the other from one reset."""
    key: str
    local_store: str
    remotes: tuple[tuple[str, str], ...]  # (bed key, store)
    image: str
    steps: tuple[tuple[str, int | str], ...]  # (scenario id, image variant); "_..." = untimed preparation


GROUPS = [
    Group("main", "containerd", (("a", "containerd"),), "app4", (("S1", 1), ("S2", 1), ("S3", 2))),
    Group("layers20", "containerd", (("a", "containerd"),), "app20", (("S4", 1),)),
    Group("big", "containerd", (("a", "containerd"),), "app1g", (("S5", 1),)),
    Group("classic-server", "containerd", (("d", "classic"),), "app4",
          (("S6.1", 1), ("S6.2", 1), ("S6.3", 2))),
    Group("classic-client", "classic", (("a", "containerd"),), "app4", (("S7.1", 1), ("S7.2", 1), ("S7.3", 2))),
    Group("three-servers", "containerd", (("a", "containerd"), ("b", "containerd"), ("c", "containerd")), "app4",
          (("S8", 1),)),
    Group("node", "containerd", (("k", "none"),), "app4", (("K1", 1), ("K2", 2))),
    *(g for fam in ("web", "data") for g in (
        Group(fam, "containerd", (("a", "containerd"),), fam,
              (("_base", "base"), (f"R1.{fam}", "1"), (f"R2.{fam}", "app2"), (f"R3.{fam}", "dep2"))),
        Group(f"{fam}-empty", "containerd", (("a", "containerd"),), fam, ((f"R4.{fam}", "1"),)))),
    # S9: the server has :1 (pushed untimed by the same method), :2 differs in ~1 % of the big layer's files
    Group("delta", "containerd", (("a", "containerd"),), "files300", (("_base", 1), ("S9.1", 2))),
    Group("delta-classic", "containerd", (("d", "classic"),), "files300", (("_base", 1), ("S9.2", 2))),
    Group("delta-exact", "classic", (("a", "containerd"),), "files300", (("_base", 1), ("S9.3", 2))),
]
SCENARIOS = {
    "S1": "first push, 4 layers (~320 MB)", "S2": "the same push again",
    "S3": "last layer (~50 MB) changed", "S4": "first push, 20 layers", "S5": "first push, one 1 GiB layer",
    "S6.1": "classic-store server: first push", "S6.2": "classic-store server: again",
    "S6.3": "classic-store server: last layer changed", "S7.1": "classic-store client: first push",
    "S7.2": "classic-store client: again", "S7.3": "classic-store client: last layer changed",
    "S8": "first push to three servers at once",
    "K1": "Kubernetes-like node (no Docker): first push", "K2": "Kubernetes-like node: last layer changed",
    "S9.1": "one 300 MB layer of 3000 files, 1 % changed (containerd-store server)",
    "S9.2": "one 300 MB layer of 3000 files, 1 % changed (classic-store server)",
    "S9.3": "one 300 MB layer of 3000 files, 1 % changed (classic-store client, containerd-store server)",
    **{f"R{i}.{fam}": f"{fam}: {what}" for fam in ("web", "data") for i, what in (
        (1, "first push, the server has the base"), (2, "application code changed"),
        (3, "one dependency added"), (4, "first push to an empty server"))},
}


def selected(scenario: str, want: set[str]) -> bool:
    """`want` holds ids (S6.1, R1.web), prefixes (S6, R1, K) or image families (web, data)."""
    if scenario.startswith("_"):
        return False
    s = scenario.lower()
    head, _, fam = s.partition(".")
    return s in want or head in want or (head[:1] in "kr" and (head[:1] in want or fam in want))


class Runner:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.t0 = time.monotonic()
        self.data: dict = {"meta": {}, "samples": [], "profiles": [], "log": []}
        self.workdir = Path(tempfile.mkdtemp(prefix="pussh-bench-"))
        self.bed = Bed(self.workdir, log=self.log)
        self.methods: dict[str, Method] = {n: METHODS[n](self.bed, self.workdir) for n in a.methods}
        self.out_path = Path(a.out) if a.out else OUT / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.data["log"].append(line)

    # -- set-up --------------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        want = set(self.a.scenarios)
        return [g for g in GROUPS if any(selected(s, want) for s, _ in g.steps)]

    def group_methods(self, g: Group) -> list[Method]:
        """The chosen methods that can push to every server of the group."""
        return [m for m in self.methods.values() if all(store in m.stores for _, store in g.remotes)
                and (m.groups is None or g.key in m.groups)]

    def steps(self, g: Group) -> list[tuple[str, int | str]]:
        want = set(self.a.scenarios)
        chosen = [(s, v) for s, v in g.steps if selected(s, want)]
        # a later step needs the earlier ones (S3 starts from S1's result): keep the prefix
        last = max(g.steps.index(x) for x in chosen)
        return list(g.steps[:last + 1])

    def sizes(self, spec: ImageSpec) -> list[float]:
        return [max(round(s * self.a.scale, 1), 0.1) for s in spec.sizes_mb]

    def setup(self) -> None:
        groups = self.groups()
        for g in groups:
            self.bed.local(g.local_store)
            for key, store in g.remotes:
                self.bed.remote(key, store)
        t = time.monotonic()
        self.bed.registry_image(self.bed.local("containerd"))  # the tar is cached by source hash
        self.log(f"setup: registry image ready in {time.monotonic() - t:.1f}s")
        built: set[tuple[str, str]] = set()
        images: dict = {}
        for g in groups:
            spec = IMAGES[g.image]
            if (g.local_store, g.image) in built:
                continue
            built.add((g.local_store, g.image))
            local = self.bed.local(g.local_store)
            t = time.monotonic()
            if isinstance(spec, realimages.RealImage):
                tags = realimages.build(local, spec, CACHE, log=self.log)
                self.log(f"setup: {', '.join(tags)} ready in {time.monotonic() - t:.1f}s")
                images[g.image] = self.real_info(local, spec, tags)
                continue
            names = {spec.tag(v): v for v in range(1, spec.variants + 1)}
            if isinstance(spec, FilesSpec):
                self.bed.build_files_images(local, {n: v - 1 for n, v in names.items()}, spec.total_mb * self.a.scale,
                                            spec.files, seed=f"bench-{g.image}", changed=spec.changed)
                self.log(f"setup: built {', '.join(names)} in {time.monotonic() - t:.1f}s")
                info = {n: self.bed.image_blobs(local, n) for n in names}
                images[g.image] = {"total_mb": spec.total_mb * self.a.scale, "files": spec.files, "tags": info,
                                   "changed_data": spec.changed_bytes(self.a.scale)}
                continue
            self.bed.build_images(local, names, self.sizes(spec), seed=f"bench-{g.image}", text_mb=spec.text_mb)
            self.log(f"setup: built {', '.join(names)} on the {g.local_store}-store client "
                     f"in {time.monotonic() - t:.1f}s")
            if g.local_store == "containerd":
                info = {}
                for name in names:
                    b = self.bed.image_blobs(local, name)
                    if b:
                        b["total"] = b["index"] + b["manifest"] + b["config"] + sum(s for _, s in b["layers"])
                    info[name] = b
                if spec.variants > 1 and info.get(spec.tag(2)):
                    # the changed layer alone (compressed), and with the new config + manifest (+ index)
                    v1 = {d for d, _ in info[spec.tag(1)]["layers"]}
                    v2 = info[spec.tag(2)]
                    v2["changed_layer"] = sum(s for d, s in v2["layers"] if d not in v1)
                    v2["changed"] = v2["changed_layer"] + v2["manifest"] + v2["config"] + v2["index"]
                images[g.image] = {"sizes_mb": self.sizes(spec), "text_mb": spec.text_mb, "tags": info}
        self.data["meta"]["images"] = images
        for m in self.methods.values():
            for r in self.bed.remotes():
                if self.bed.store(r) in m.stores:
                    m.prepare(r)
        # warm-up (unmeasured): every method once to every server it is measured on, tiny image
        for store in sorted({g.local_store for g in groups}):
            local = self.bed.local(store)
            self.bed.build_images(local, {"bench/warm:1": 1}, [1], seed="bench-warm", text_mb=0)
            pairs = {(m.name, self.bed.remote(k).alias): (m, self.bed.remote(k))
                     for g in groups if g.local_store == store for m in self.group_methods(g) for k, _ in g.remotes}
            for m, r in pairs.values():
                o = m.push(local, "bench/warm:1", [r])
                if not o.ok:
                    raise RuntimeError(f"warm-up {m.name} -> {r.alias} failed: {o.error}")
        self.log("setup: warm-up pushes done")
        self.save()

    def real_info(self, local, spec: realimages.RealImage, tags: list[str]) -> dict:
        """Per tag: its compressed blobs; per layer: compressed and uncompressed size and file count; per
        changed tag: what differs from `:1` (the layers a push must send)."""
        info: dict = {"what": spec.what, "deps": list(spec.deps), "added": spec.added, "tags": {}, "layers": {}}
        for tag in tags:
            b = self.bed.image_blobs(local, tag)
            b["total"] = b["index"] + b["manifest"] + b["config"] + sum(sz for _, sz in b["layers"])
            info["tags"][tag] = b
            for d, sz in b["layers"]:
                if d not in info["layers"]:
                    info["layers"][d] = {"compressed": sz, **realimages.layer_stats(local, d)}
        base = {d for d, _ in info["tags"][spec.tag("base")]["layers"]}
        v1 = {d for d, _ in info["tags"][spec.tag("1")]["layers"]}
        for tag, ref in ((spec.tag("1"), base), (spec.tag("app2"), v1), (spec.tag("dep2"), v1)):
            b = info["tags"][tag]
            b["changed_layer"] = sum(sz for d, sz in b["layers"] if d not in ref)
            b["changed"] = b["changed_layer"] + b["manifest"] + b["config"] + b["index"]
        return info

    # -- one push ------------------------------------------------------------------------------------
    def settle(self, remotes) -> None:
        """Wait (untimed) for the servers' ssh sessions to end, so their CPU lands in sshd's cutime."""
        sshds = [p for r in remotes for n, p in self.bed.daemon_pids(r).items() if n == "sshd"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(children_of(p) for p in sshds):
            time.sleep(0.05)

    def reset(self, m: Method, g: Group) -> dict:
        remotes = [self.bed.remote(k) for k, _ in g.remotes]
        m.reset(self.bed.local(g.local_store), remotes)
        return {self.bed.alias(r): self.bed.wait_gc(r) for r in remotes}

    def measure(self, m: Method, g: Group, scenario: str, image: str, shape: str, run: int) -> dict:
        local = self.bed.local(g.local_store)
        remotes = [self.bed.remote(k) for k, _ in g.remotes]
        daemons = {f"local.{n}": p for n, p in self.bed.daemon_pids(local).items()}
        for key, _ in g.remotes:
            daemons |= {f"{key}.{n}": p for n, p in self.bed.daemon_pids(self.bed.remote(key)).items()}
        probe = Probe(lambda: self.bed.link_bytes(remotes), daemons, registry_pids=m.registry_pids(remotes),
                      registry_comm=m.registry_comm, netns=[self.bed.netns_inode(r) for r in remotes],
                      delayers=[p for r in remotes for p in self.bed.delayer_pids(r)]).start()
        try:
            o = m.push(local, image, remotes)
            self.settle(remotes)
        finally:
            pr = probe.stop()
        runnable = None
        if o.ok and all(self.bed.store(r) == "none" for r in remotes):
            runnable = [self.bed.runnable(r, image) for r in remotes]
        s = {"scenario": scenario, "group": g.key, "method": m.name, "shape": shape, "run": run, "image": image,
             "servers": len(remotes), "seconds": round(o.seconds, 3), "ok": o.ok, "error": o.error,
             "client_cpu": round(o.client_cpu, 3), "client_rss": o.client_rss, **asdict(pr),
             "link_bytes": pr.link_tx + pr.link_rx, "details": o.details, "commands": o.commands}
        s["server_cpu"] = round(pr.registry_cpu + sum(v for k, v in pr.daemons_cpu.items()
                                                       if not k.startswith("local.")), 3)
        s["local_daemons_cpu"] = round(sum(v for k, v in pr.daemons_cpu.items() if k.startswith("local.")), 3)
        s["cpu"] = round(s["client_cpu"] + s["server_cpu"] + s["local_daemons_cpu"], 3)
        if runnable is not None:
            # runnable right after the push if it is unpacked; else after the unpack `ctr run` does first
            s["runnable"] = runnable
            s["runnable_seconds"] = round(s["seconds"] + sum(x["run_seconds"] for x in runnable
                                                             if not x.get("unpacked")), 3)
            if not all(x["run_ok"] for x in runnable):
                s["ok"], s["error"] = False, "not runnable: " + "; ".join(x.get("run_error", "") for x in runnable)
        return s

    # -- the loops -----------------------------------------------------------------------------------
    def shapes(self) -> list[tuple[str, str | None, str | None]]:
        return [("unshaped", None, None) if s == "unshaped" else ("shaped", self.a.rate, self.a.delay)
                for s in self.a.shapes]

    def run(self) -> None:
        self.data["meta"].update(self.meta())
        self.setup()
        all_remotes = self.bed.remotes()
        for shape, rate, delay in self.shapes():
            self.bed.shape(all_remotes, rate, delay)
            self.log(f"== {shape}" + (f" ({rate}, one-way delay {delay})" if rate or delay else ""))
            for g in self.groups():
                steps = self.steps(g)
                for run in range(self.a.runs):
                    names = [m.name for m in self.group_methods(g)]
                    k = run % max(len(names), 1)
                    for name in names[k:] + names[:k]:
                        m = self.methods[name]
                        left = self.reset(m, g)
                        for scenario, v in steps:
                            if m.scenarios is not None and scenario not in m.scenarios:
                                continue
                            if scenario.startswith("_"):  # preparation (the base image on the server): untimed
                                local = self.bed.local(g.local_store)
                                o = m.push(local, IMAGES[g.image].tag(v), [self.bed.remote(k) for k, _ in g.remotes])
                                if not o.ok:
                                    self.log(f"{shape} {g.key} {name}: preparation {scenario} failed: {o.error}")
                                continue
                            s = self.measure(m, g, scenario, IMAGES[g.image].tag(v), shape, run)
                            if scenario == next(x for x, _ in steps if not x.startswith("_")):
                                s["blobs_left_after_reset"] = left
                            self.data["samples"].append(s)
                            self.log(f"{shape} {scenario:6} run {run} {name:14} {s['seconds']:7.2f}s "
                                     f"link {s['link_bytes'] / 1e6:8.1f} MB  client {s['client_cpu']:5.1f} cpu-s "
                                     f"{s['client_rss'] / 1e6:5.0f} MB  registry {s['registry_rss'] / 1e6:4.0f} MB"
                                     f"  cpu {s['cpu']:5.1f}s  busy {s['machine_busy']:.0%}"
                                     + (f"  data at {s['first_data']:.2f}s" if s.get("first_data") is not None else "")
                                     + (f"  runnable {s['runnable_seconds']:.2f}s" if "runnable_seconds" in s else "")
                                     + ("" if s["ok"] else f"  FAILED: {s['error']}"))
                            self.save()
            self.bed.shape(all_remotes, None, None)
        if "pussh" in self.methods:
            self.startup()
        if self.a.profile:
            self.profile()
        self.data["meta"]["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        self.data["meta"]["wall_seconds"] = round(time.monotonic() - self.t0, 1)
        self.save()

    # -- profiles of missed targets ----------------------------------------------------------------------
    def profile(self) -> None:
        from .report import evaluate
        missed = {(t["scenario"], t["shape"]) for t in evaluate(self.data) if t["ok"] is False and t.get("profile")}
        if not missed or "pussh" not in self.methods:
            return
        pyspy = shutil.which("py-spy") or str(REPO / ".venv/bin/py-spy")
        if not Path(pyspy).exists():
            self.log("profile: py-spy not found (.venv/bin/pip install py-spy): no profiles")
            return
        m = self.methods["pussh"]
        assert isinstance(m, Pussh)
        all_remotes = self.bed.remotes()
        for scenario, shape in sorted(missed):
            g = next((g for g in self.groups() if any(s == scenario for s, _ in g.steps)), None)
            sh = next((x for x in self.shapes() if x[0] == shape), None)
            if g is None or sh is None:
                continue
            self.bed.shape(all_remotes, sh[1], sh[2])
            local = self.bed.local(g.local_store)
            remotes = [self.bed.remote(k) for k, _ in g.remotes]
            self.reset(m, g)
            for step, v in g.steps:
                image = IMAGES[g.image].tag(v)
                if step != scenario:
                    m.push(local, image, remotes)
                    continue
                self.log(f"profile: {scenario} {shape} under py-spy")
                self.data["profiles"].append(self.profile_one(pyspy, m, local, image, remotes, scenario, shape))
                self.save()
                break
            self.bed.shape(all_remotes, None, None)

    def startup(self) -> None:
        """pussh's start-up alone (interpreter + imports + click): `pussh --version`, 5 times."""
        m = self.methods["pussh"]
        assert isinstance(m, Pussh)
        times = []
        for _ in range(5):
            r = run_client([*m.argv0, "--version"], m.env(self.bed.local("containerd")), self.workdir, "version")
            times.append(round(r.seconds, 3))
        self.data["startup"] = {"command": "pussh --version", "seconds": times}
        self.log(f"profile: pussh --version {sorted(times)[2]:.2f}s (median of 5)")

    def profile_one(self, pyspy: str, m: Pussh, local, image: str, remotes, scenario: str, shape: str) -> dict:
        raw = self.workdir / f"profile-{scenario}-{shape}.txt"
        # without --json and -q: with --json and stderr not a terminal pussh hides its per-blob lines
        argv = [a for a in m.argv(image, remotes, "-v") if a not in ("-q", "--json")]
        cmd = [pyspy, "record", "--nonblocking", "--rate", "200", "--format", "raw", "--output", str(raw),
               "--", *argv]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, env=m.env(local), cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        timeline: list[tuple[float, str]] = []

        def read_err() -> None:
            assert p.stderr is not None
            for line in p.stderr:
                timeline.append((round(time.monotonic() - t0, 3), line.rstrip()))
        th = threading.Thread(target=read_err)
        th.start()
        out = p.stdout.read() if p.stdout else ""
        p.wait()
        th.join()
        wall = time.monotonic() - t0
        stacks: dict[str, int] = {}
        if raw.exists():
            for line in raw.read_text().splitlines():
                st, _, n = line.rpartition(" ")
                if n.isdigit():
                    stacks[st] = stacks.get(st, 0) + int(n)
        return {"scenario": scenario, "shape": shape,
                "command": " ".join(cmd).replace(str(raw), "OUT.txt").replace(self.bed.ssh_config, "CONFIG"),
                "wall": round(wall, 2), "rc": p.returncode, "stdout": out[-2000:],
                "timeline": [t for t in timeline if not t[1].startswith(("py-spy>", "Sampling"))][-60:],
                "stacks": stacks, "rate": 200}

    # -- bookkeeping -----------------------------------------------------------------------------------
    def meta(self) -> dict:
        def sh(*argv: str) -> str:
            try:
                cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                return (cp.stdout or cp.stderr).strip()
            except (OSError, subprocess.TimeoutExpired):
                return "?"
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.processor())
        mem = next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        osr = dict(ln.split("=", 1) for ln in Path("/etc/os-release").read_text().splitlines() if "=" in ln)
        import aiohttp
        import asyncssh
        return {
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "argv": ["python", "-m", "benchmarks.run", *sys.argv[1:]],
            "config": {"runs": self.a.runs, "scale": self.a.scale, "shapes": self.a.shapes, "rate": self.a.rate,
                       "delay_one_way": self.a.delay, "scenarios": self.a.scenarios, "methods": self.a.methods},
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(int(mem) / 2**20, 1),
                        "kernel": platform.release(), "os": osr.get("PRETTY_NAME", "?").strip('"')},
            "versions": {
                "docker_cli": (sh("docker", "version", "--format", "{{.Client.Version}}").splitlines() or ["?"])[0],
                "dockerd": sh("dockerd", "--version"), "containerd": sh("containerd", "--version"),
                "openssh": sh("ssh", "-V"), "docker-registry": sh("docker-registry", "--version"),
                "python": platform.python_version(), "asyncssh": asyncssh.__version__,
                "aiohttp": aiohttp.__version__,
                "pussh_commit": sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
                "pussh_dirty": bool(sh("git", "-C", str(REPO), "status", "--porcelain", "--", "pussh", "registry",
                                       "ctrd", "oci")),
            },
            "commands": {name: m.templates() for name, m in self.methods.items()},
            "scenarios": SCENARIOS,
        }

    def save(self) -> None:
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.rename(self.out_path)

    def close(self) -> None:
        kill_all()
        for m in self.methods.values():
            try:
                m.stop()
            except Exception as e:  # noqa: BLE001
                self.log(f"stopping {m.name}: {e}")
        self.bed.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="S1-S3, K1-K2 and R1-R3 on web only, 1 run (unless --runs), both shapes")
    ap.add_argument("--runs", type=int, help="runs per cell (default 3; --quick 2)")
    ap.add_argument("--scenarios", help="comma-separated, e.g. S1,S3,S6,K,R1.web,data (default all)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--shapes", default="unshaped,shaped")
    ap.add_argument("--rate", default="200mbit")
    ap.add_argument("--delay", default="10ms", help="one way (RTT = 2 x delay)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the layer sizes (smoke tests: 0.05)")
    ap.add_argument("--out", help="raw JSON (default benchmarks/out/<time>.json)")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="do not profile pussh (py-spy) in the cells that miss a target")
    ap.add_argument("--no-report", dest="report", action="store_false",
                    help="do not write benchmarks/RESULTS.md and the chart")
    a = ap.parse_args(argv)
    a.runs = a.runs or (1 if a.quick else 3)
    default = "S1,S2,S3,K2,R1.web,R2.web,R3.web" if a.quick else "S1,S2,S3,S4,S5,S6,S7,S8,S9,K,web,data"
    a.scenarios = [s.strip().lower() for s in (a.scenarios or default).split(",") if s.strip()]
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    a.shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    bad = [m for m in a.methods if m not in METHODS] + [s for s in a.shapes if s not in ("unshaped", "shaped")]
    bad += [s for s in a.scenarios if not re.fullmatch(r"s[1-8](\.[1-3])?|s9(\.[1-3])?|k[12]?|r[1-4](\.(web|data))?|web|data", s)]
    if bad:
        ap.error(f"unknown: {', '.join(bad)}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks: the test bed needs root (sudo .venv/bin/python -m benchmarks.run)", file=sys.stderr)
        return 2
    r = Runner(a)
    try:
        r.run()
    except KeyboardInterrupt:
        r.log("interrupted: partial results kept")
        return 130
    finally:
        r.save()
        r.close()
        print(f"raw measurements: {r.out_path}")
    if a.report:
        from .report import write_report
        md, png = write_report(r.out_path)
        print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
