"""Turn a results JSON of `benchmarks.run` into benchmarks/RESULTS.md and benchmarks/results.png.

    .venv/bin/python -m benchmarks.report [benchmarks/out/basic-latest.json]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB, MiB = 1e6, 2**20
RATES = {"200mbit": 200e6 / 8}  # bytes/s


def cells(d: dict, shaping: str, scenario: str, method: str) -> list[dict]:
    return [c for c in d["cells"] if (c["shaping"], c["scenario"], c["method"]) == (shaping, scenario, method)]


def med(cs: list[dict], key: str) -> float | None:
    v = [c[key] for c in cs if c["ok"]]
    return statistics.median(v) if v else None


def rng(cs: list[dict], key: str) -> tuple[float, float] | None:
    v = [c[key] for c in cs if c["ok"]]
    return (min(v), max(v)) if v else None


def image_bytes(blobs: dict) -> int:
    return blobs["index"] + blobs["manifest"] + blobs["config"] + sum(s for _, s in blobs["layers"])


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def table(d: dict, shaping: str) -> list[str]:
    rows = ["| scenario | method | wall median (s) | range (s) | on the link (MB) | client CPU (s) | "
            "client peak RSS (MiB) | server registry CPU (s) | ok |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for sc, desc in d["scenarios"].items():
        for m in d["methods"]:
            cs = cells(d, shaping, sc, m)
            if not cs:
                continue
            r = rng(cs, "seconds")
            ok = sum(c["ok"] for c in cs)
            rows.append(f"| {sc} {desc} | {m} | {fmt(med(cs, 'seconds'))} | "
                        f"{'—' if r is None else f'{r[0]:.2f}–{r[1]:.2f}'} | "
                        f"{fmt(med(cs, 'link_bytes') and med(cs, 'link_bytes') / MB, '.3f')} | "
                        f"{fmt(med(cs, 'client_cpu'))} | {fmt(max((c['client_rss'] for c in cs), default=0) / MiB, '.1f')} | "
                        f"{fmt(med(cs, 'server_registry_cpu'))} | {ok}/{len(cs)} |")
    return rows


def targets(d: dict) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, note) rows."""
    out = []
    v1, v2 = d["image_blobs"]["bench/app:1"], d["image_blobs"]["bench/app:1-v2"]
    need = image_bytes(v1)
    changed = v2["layers"][-1][1]

    def t(sh, sc, m, key="seconds"):
        return med(cells(d, sh, sc, m), key)

    def row(name, measured, ok, note_ok, note_miss):
        if measured is None:
            out.append((name, "not measured", "—", ""))
        else:
            out.append((name, measured, "PASS" if ok else "MISS", note_ok if ok else note_miss))

    sh = "shaped" if "shaped" in d["shapings"] else None
    if sh:
        p = t(sh, "S1", "pussh")
        floor = need / RATES["200mbit"]
        ratio = p / floor if p else None
        row("S1 at 200 Mbit/s within 1.10x of the link floor",
            p and f"{p:.2f} s vs floor {floor:.2f} s ({need / MB:.1f} MB / 25 MB/s) = {ratio:.2f}x",
            ratio is not None and ratio <= 1.10, "",
            ratio and f"{(ratio / 1.10 - 1) * 100:.0f}% over; fixed costs (ssh + probe + registry container start, "
                      f"~{t(sh, 'S2', 'pussh') or 0:.1f} s as seen in S2) are paid before bytes flow, and "
                      f"20 ms RTT slows TCP ramp-up")
    p, s, r = t("unshaped", "S1", "pussh"), t("unshaped", "S1", "save-load"), t("unshaped", "S1", "registry")
    if p:
        row("S1 unshaped ≥ 4x faster than save/load", s and f"{s:.2f} / {p:.2f} s = {s / p:.2f}x", s and s / p >= 4, "",
            s and f"{4 / (s / p):.1f}x short of 4x; random layers do not compress, so "
                  "save/load sends the same bytes over an unthrottled veth and is bounded by the same disk/CPU; "
                  "pussh pays fixed setup (registry container start) on top")
        row("S1 unshaped ≥ 1.5x faster than registry path", r and f"{r:.2f} / {p:.2f} s = {r / p:.2f}x",
            r and r / p >= 1.5, "",
            r and f"{1.5 / (r / p):.1f}x short; the registry path here is a warm, already-running Go registry on the "
                  "same machine; pussh starts its registry container per push")
    for sh2 in d["shapings"]:
        p = t(sh2, "S2", "pussh")
        b = t(sh2, "S2", "pussh", "link_bytes")
        row(f"S2 ({sh2}) under 1.5 s", p and f"{p:.2f} s", p is not None and p < 1.5, "",
            p and f"{p - 1.5:.2f} s over: one SSH connection + remote probe on a loaded 2-core machine")
        row(f"S2 ({sh2}) under 100 KB on the link", b is not None and f"{b / 1e3:.1f} KB", b is not None and b < 100e3,
            "", b and f"{b / 1e3 - 100:.0f} KB over")
    if sh:
        p, s, r = t(sh, "S3", "pussh"), t(sh, "S3", "save-load"), t(sh, "S3", "registry")
        if p:
            row("S3 at 200 Mbit/s ≥ 5x faster than save/load", s and f"{s:.2f} / {p:.2f} s = {s / p:.2f}x",
                s and s / p >= 5, "",
                s and f"{5 / (s / p):.1f}x short; pussh's fixed cost (connect, probe, registry container) is a large "
                      "share of a ~50 MB transfer")
            row("S3 at 200 Mbit/s faster than registry path", r and f"{r:.2f} vs {p:.2f} s", r and p < r, "",
                r and f"{p - r:.2f} s slower; the registry path's registry is already running, pussh starts one")
        b = t(sh, "S3", "pussh", "link_bytes")
        dev = (b - changed) / changed if b else None
        row("S3 bytes on the link within 5% of the changed layer", b and
            f"{b / MB:.2f} MB vs layer {changed / MB:.2f} MB ({dev * 100:+.1f}%)",
            dev is not None and abs(dev) <= 0.05, "",
            dev and f"{abs(dev) * 100 - 5:.1f} points over: TCP/IP + SSH framing (~3-4% at 1500 MTU) plus the "
                    "ACK stream counted in rx")
    out.append(("S8 three servers in < 1.3x the time of one", "not measured", "—", "not run (time)"))
    rss = [c["client_rss"] for c in d["cells"] if c["method"] == "pussh" and c["ok"]]
    if rss:
        m = max(rss) / MiB
        row("pussh client peak RSS under 150 MB", f"max {m:.1f} MiB over {len(rss)} pushes", m * MiB < 150e6, "",
            f"{m * MiB / 1e6 - 150:.0f} MB over")
    return out


def plot(d: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapings = list(d["shapings"])
    methods = list(d["methods"])
    scs = list(d["scenarios"])
    fig, axes = plt.subplots(1, len(shapings), figsize=(6 * len(shapings), 4.2), squeeze=False)
    w = 0.8 / len(methods)
    for ax, sh in zip(axes[0], shapings):
        for i, m in enumerate(methods):
            meds, lo, hi = [], [], []
            for sc in scs:
                cs = cells(d, sh, sc, m)
                v = med(cs, "seconds") or 0
                r = rng(cs, "seconds") or (v, v)
                meds.append(v)
                lo.append(v - r[0])
                hi.append(r[1] - v)
            xs = [j + (i - (len(methods) - 1) / 2) * w for j in range(len(scs))]
            ax.bar(xs, meds, w, yerr=[lo, hi], capsize=3, label=m)
        ax.set_xticks(range(len(scs)), [f"{sc}\n{d['scenarios'][sc]}" for sc in scs], fontsize=8)
        rate, delay = d["shapings"][sh]
        ax.set_title(f"{sh}" + (f" ({rate}, {delay} one-way)" if rate else ""))
        ax.set_ylabel("wall time (s), median; bars = range")
        ax.legend()
    fig.suptitle(f"pussh vs save/load vs registry path — {d['runs']} run(s) per cell", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "out" / "basic-latest.json"
    d = json.loads(src.read_text())
    mc = d["machine"]
    loads = [c["loadavg"] for c in d["cells"]]
    busy = [c["machine_busy"] for c in d["cells"]]
    lines = [
        "# pussh benchmarks", "",
        "Generated by `benchmarks/report.py` from `benchmarks/out/` (raw JSON, not committed). Measured with:", "",
        f"    {d['command']}", "",
        f"Started {d['started']}; {d['runs']} run(s) per cell; methods interleaved within each run.", "",
        "## Machine", "",
        f"- {mc['nproc']} CPUs ({mc['cpu']}), {mc['mem_gb']} GB RAM, kernel {mc['kernel']}",
        f"- {mc['docker']}; {mc['containerd']}; {mc['openssh']}; Python {mc['python']}; {mc['docker_registry']}",
        f"- load average at start {' '.join(mc['loadavg_start'])}, at end {' '.join(d.get('loadavg_end', ['?']))}; "
        f"1-min load during pushes {min(loads, default=0):.2f}–{max(loads, default=0):.2f}; share of the machine's "
        f"CPU busy during pushes (anyone's work) median {statistics.median(busy) if busy else 0:.0%}. Other test runs "
        "shared this 2-core machine, so absolute times carry that noise.",
        "- Server: a test-bed `RemoteHost` (own netns+mountns, containerd store, sshd) reached over a veth on the "
        "same machine; shaping = `RemoteHost.shape(rate, delay)` (HTB rate + one-way delay on the veth).", "",
        "## Workload", "",
        f"`bench/app:1`: busybox + {'/'.join(f'{s:g}' for s in d['sizes_mb'])} MB random-data layers "
        f"({image_bytes(d['image_blobs']['bench/app:1']) / MB:.1f} MB compressed, everything the server needs); "
        f"`bench/app:1-v2` differs only in the last layer "
        f"({d['image_blobs']['bench/app:1-v2']['layers'][-1][1] / MB:.2f} MB compressed).", "",
        "Scenarios: " + "; ".join(f"{k} = {v}" for k, v in d["scenarios"].items()) +
        ". Before each S1 the server is reset per method (bench images removed and garbage-collected; "
        "the distribution registry restarted on empty storage; pussh's registry image stays on the server "
        "and pussh's local cache dir is emptied).", "",
        "## Methods (exact commands)", ""]
    for m, info in d["methods"].items():
        lines.append(f"- **{m}** — {info['label']}:")
        lines += [f"    - `{t}`" for t in info["templates"]]
    lines += ["", "Columns: wall = the client command(s) from start to end; on the link = tx+rx byte counters of "
              "the server's veth across the push; client CPU/RSS = user+sys and peak RSS from wait4() rusage of "
              "the client processes (pussh with its children; for save/load the bash pipeline incl. `docker save` "
              "CLI and ssh; for the registry path `docker push` CLI, ssh tunnel, ssh pull) — daemons not included; "
              "server registry CPU = pussh's registry container / the running docker-registry.", ""]
    for sh, (rate, delay) in d["shapings"].items():
        lines += [f"## {sh}" + (f" — {rate}, {delay} one-way delay (20 ms RTT)" if rate else " — veth, no shaping"), ""]
        lines += table(d, sh) + [""]
    lines += ["## Targets", "", "| target | measured | verdict | where missed: by how much, likely cause |",
              "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in targets(d)]
    fails = [c for c in d["cells"] if not c["ok"]]
    if fails:
        lines += ["", "## Failed pushes", ""] + [f"- {c['shaping']} {c['scenario']} {c['method']} run {c['run']}: "
                                                 f"{c['error'][:300]}" for c in fails]
    lines += ["", "![wall times](results.png)", ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    plot(d, HERE / "results.png")
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
