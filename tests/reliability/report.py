"""Renders tests/RELIABILITY.md from runs' raw records (tests/reliability/out/*.json; conftest.py writes
out/run.json at the end of every pytest session that ran reliability tests; keep a run under another
name, e.g. out/run-1.json, to combine it with a later partial run: per test, the latest run that ran it
gives its figures, and the header names every run with its date, commit and tests).

    .venv/bin/python -m pytest -p no:cacheprovider tests/reliability tests/e2e/test_registry_clients.py \\
        tests/e2e/test_registry_cli.py
    .venv/bin/python tests/reliability/report.py            # -> tests/RELIABILITY.md
    .venv/bin/python tests/reliability/report.py --check    # exit 1 if RELIABILITY.md is not what run.json gives

Every figure in the document comes from run.json: the prose here only says what each test does."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DOC = HERE.parent / "RELIABILITY.md"

FUZZ_CLASSES = {
    "test_names": "Names: path traversal (`..`, `%2e%2e`, `..%2F..%2Fetc`), encoded slashes, control characters, "
                  "upper case, unicode, separators at the ends, 300-char components, `host:port/` prefixes, on 8 endpoints "
                  "| valid names get the endpoint's status (PUT manifest 201, ...); invalid ones 400 `NAME_INVALID` "
                  "(404 when no route matches); never a 2xx",
    "test_digests": "Digests: malformed shapes (length, case, non-hex, trailing `%0a`/`%00`/`/`, separators), other "
                    "algorithms, on blob GET/HEAD/DELETE, manifest GET/HEAD/PUT/DELETE, upload `?digest=`, `?mount=`, "
                    "referrers | 400 `DIGEST_INVALID`/`UNSUPPORTED` (a mount: exactly 400 with one of the two); "
                    "404 for lookups of impossible references; 405 `UNSUPPORTED` for deleting a blob the seed image uses",
    "test_unknown_upload_ids": "Unknown upload ids (random hex, traversal, `%00`, wrong length) "
                               "| 404 `BLOB_UPLOAD_UNKNOWN` (405 on the bare uploads path)",
    "test_finished_and_cancelled_upload_ids": "Finished and cancelled upload ids | 404 `BLOB_UPLOAD_UNKNOWN`",
    "test_chunk_sequences": "Chunk sequences: in-order, overlapping, gapped, streamed, malformed `Content-Range`, "
                            "length mismatches, half a chunk then gone, status checks, PUT with the right digest, a wrong "
                            "one, another blob's, none | exactly the continuing chunks accepted (416 + `Range` otherwise); "
                            "the committed blob is exactly the accepted bytes",
    "test_blob_range": "`Range` on blob GET (every form, unsatisfiable, suffix, multi-range) | 206 with the exact "
                       "slice; 200 for what is ignored; 416 `RANGE_INVALID` with `Content-Range: bytes */N`",
    "test_headers": "Headers: random `Authorization`, `Content-Range`, `Range`, `Content-Type`, `Transfer-Encoding`, "
                    "`Expect`, `Content-Encoding`, ... | every request answered (no hang-up); wrong credentials 401 "
                    "`UNAUTHORIZED`; the HTTP layer's plain 400/417/431 for framing it refuses",
    "test_manifests": "Manifest bodies: random bytes/JSON, the seed manifest with up to 3 mutations, indexes "
                      "(missing children, a config blob, a placeholder, wrong sizes, subjects), nesting 100-100000 deep, "
                      "1000-20000 descriptors | a valid manifest (Go-readable, descriptors with media types, children "
                      "present) MUST be accepted (201); otherwise 400 `MANIFEST_INVALID`/`MANIFEST_BLOB_UNKNOWN`, "
                      "413 over 4 MiB; a refused PUT leaves the tag as it was",
    "test_manifest_fuzz_required_valid_ones": "How many drawn manifests were valid (each had to be accepted) | "
                                              "at least 20",
    "test_oversized_manifests": "4 MiB + 1, exactly 4 MiB, a `Content-Length` of 1 TiB | 413, 201, 413",
    "test_huge_and_odd_requests": "8 KiB / 64 KiB / 1 MiB header, 100 and 10000 headers, 100 KB path, 1 MiB query, "
                                  "unknown method, no `Host` | 400/431 (200 for 100 headers); only a head over 64 KiB "
                                  "may be closed unanswered",
    "test_store_after_uploads_expire": "After simulated lease expiry + GC | no ingest, no upload lease, no "
                                       "unreferenced blob; the seed image whole",
    "test_request_count": "The whole module's request count | at least 10,000",
}

SECURITY = {
    "test_registry_loopback_only_token_required_unprivileged":
        "During a push (`--via registry`) the registry listens on the server's 127.0.0.1 only; refused from this "
        "machine; another local user gets 401 for every request (no token, wrong bearer, truncated token, wrong "
        "basic password) and finds the token in no `/proc/*/cmdline`/`environ`, Docker refuses them; root with the "
        "token gets 200; the token is on no command line; the registry runs as uid 65532",
    "test_host_key_checked_by_default_and_a_changed_key_stops_the_push":
        "No `StrictHostKeyChecking` and an empty known_hosts: refused (`host key not known`); a replaced host key: "
        "refused (`host key has CHANGED`), known_hosts unchanged, nothing started; restored: the push works",
    "test_names_with_every_valid_character_push_as_data":
        "Names with every separator, a 128-char tag, `localhost:5000/...`, `[::1]:5000/...`: pushed as data, whole "
        "and runnable under exactly that name",
    "test_invalid_names_refused_locally":
        "20 invalid names with shell metacharacters, leading dashes, upper case, non-ASCII, `..`, 129-char tag, "
        "empty component, bad digest: exit 2 locally, no connection, no marker file, no registry",
}

BUGS = """| Found by | Bug | Fix (commit) |
|---|---|---|
| fuzz: names, digests | `$` in the name/tag/digest/upload-id/target patterns matched before a trailing newline: `app:1\\n`, a `%0A`-decoded name or digest passed; `\\w` in tags matched any Unicode letter | `\\Z`, ASCII tags (d067c02) |
| fuzz: names | a path with a `%0A`-decoded newline fell through to aiohttp's plain 404 | the route matches any path (f85a977) |
| fuzz: digests | `DELETE /manifests/<digest>` deleted any content with that digest; `DELETE /blobs/<digest>` deleted layers of tagged images | not a manifest: `MANIFEST_UNKNOWN`; in use: 405 `UNSUPPORTED` (412f7db, 97c98e0) |
| fuzz: chunks | `PUT ?digest=D` of bytes that are not D answered 201 when D existed | success only if containerd took the ingest and the size matches (412f7db) |
| fuzz: manifests | deep JSON, a list as `mediaType`, a number as descriptor: 500s | `MANIFEST_INVALID` (0b16138) |
| fuzz: manifests | sizes `"12"`/`1.5`/`true`, lists for strings, non-string annotations coerced and stored | JSON types checked as the OCI Go structs have them (0b16138, 440889b) |
| fuzz: manifests | a manifest with a stray `manifests` key (or an index with `config`/`layers`) stored; `gc_refs` crashed on non-descriptor entries | refused; labels from the parsed kind (440889b) |
| fuzz: headers | a body aiohttp cannot decode (`Content-Encoding: gzip` that is not) was a 500 | 400 `UNSUPPORTED` (0b16138) |
| fuzz: manifests | a 4 MiB manifest listing one layer 20000 times took ~150 s of containerd calls | each distinct child once, in batches (3782f8b) |
| fuzz: manifests | an index listing a config blob as a manifest was tagged | `MANIFEST_BLOB_UNKNOWN` (f09e7ba) |
| concurrency | the leftover sweep removed a concurrent push's registry container (state `created`) | only exited/dead ones (dfc35f3) |
| security | pussh could not push `localhost:5000/app:1` | registry accepts `HOST:PORT/path` (867e141) |
| security | registry image ran as root; the quick start ran it on 0.0.0.0 without a token | uid 65532 + socket group; token and loopback in the docs (534d342) |
| issue 11 | deleting a used blob, lookups by impossible references, PUT right after DELETE | 405 `UNSUPPORTED`, 404, adopted bytes (97c98e0) |
"""

LIMITS = """- A link that dies silently leaves the server's sshd session (and so a registry container) up until the
  server's TCP notices: in the test the restored link resets it at once; on a link that stays dead that is
  TCP keepalive unless sshd has `ClientAliveInterval`. The upload lease expires after 1 h regardless.
- Faults that pass within `--timeout` are ridden out since ca43cd6 (the table's "expected" column is
  `EXPECT` in test_faults.py, asserted exactly); a link that stays dead until pussh gives up, and SIGKILL,
  end the push with the old tag whole. `traffic-dropped` runs on the registry path only (~75 s a path:
  the suite's share of CI time); the blip and the SSH cuts run on both.
- Concurrent pushes of images sharing layers do not coordinate: each sends a shared layer if it was
  missing when it asked, so how often it crosses is timing (the table shows the run's figure); what is
  asserted is that the wire agrees with the pushes' reports.
- Lease expiry is simulated (the leases are deleted after checking they carry an expiry of at most 2 h);
  `tests/e2e/test_registry_api.py` and `test_registry_clients.py` cover real expiry with 1-3 s expiries.
- Wire figures are bytes on the server's veth (local -> server), SSH and TCP framing included; a push is
  bounded by `fixed + per_byte x payload` (measured per test on a full push and a no-op push), +2 % +
  384 KiB.
- Not attacked: the classic-store path (docker load) beyond tests/e2e; TLS (none, by design on loopback);
  resource exhaustion by many parallel uploads. Podman cannot start containers in this sandbox (runc may
  not set podman's rlimits), so its pulled image is checked by exporting a created container.
"""


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def mib(n) -> str:
    return "-" if n is None else f"{n / (1 << 20):.2f} MiB"


def outcome_of(run: dict, nodeid_part: str) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in sorted(run["outcomes"].items()) if nodeid_part in k]


def merge(runs: list[dict]) -> dict:
    """One view of several runs (oldest first): per test, the latest run that ran it."""
    runs = sorted(runs, key=lambda r: r["date"])
    merged = {**runs[-1], "records": {}, "outcomes": {}, "requests": {}, "runs": runs}
    for r in runs:
        tests = {k.split("::", 1)[-1] for k in r["outcomes"]}
        for k in list(merged["outcomes"]):
            if k.split("::", 1)[-1] in tests:
                del merged["outcomes"][k]
        merged["outcomes"].update(r["outcomes"])
        merged["records"] = {k: v for k, v in merged["records"].items() if k not in tests} | r["records"]
        for k, v in r["requests"].items():
            if k.split("[")[0] in {t.split("[")[0] for t in tests} or k.startswith("fuzz setup") and \
                    any("test_registry_fuzz" in o for o in r["outcomes"]):
                merged["requests"][k] = v
    return merged


def render(run: dict) -> str:
    rec = run["records"]
    out: list[str] = []
    w = out.append
    outcomes = run["outcomes"]
    passed = sum(1 for o in outcomes.values() if o["outcome"] == "passed")
    failed = {k: o["outcome"] for k, o in outcomes.items() if o["outcome"] not in ("passed", "skipped")}
    w("# Reliability and security suite (issues 6, 11)\n")
    w("<!-- generated by tests/reliability/report.py from tests/reliability/out/*.json: do not edit -->\n")
    w("`tests/reliability/` attacks pussh and its registry on the real test bed (our own containerd, dockerd and "
      "sshd; the server in its own network and mount namespaces). Nothing is mocked. Every figure below comes "
      "from the run(s) listed here, whose raw output is committed in [reliability/out/](reliability/out/) "
      "(per test, the latest run that ran it):\n")
    for i, r in enumerate(run["runs"], 1):
        kept = sum(1 for k in outcomes if k in r["outcomes"] and outcomes[k] is r["outcomes"][k])
        r_failed = sum(1 for o in r["outcomes"].values() if o["outcome"] not in ("passed", "skipped"))
        w(f"- **run {i}**: {r['date']}, commit `{r['commit'][:12]}`"
          + (f" plus uncommitted changes to {', '.join(f'`{f}`' for f in r['uncommitted'])}" if r["uncommitted"] else "")
          + f"; `pytest {' '.join(r['args'])}`{' with CI=1 (derandomized fuzz)' if r['ci'] else ''}; "
          f"wall time {r['wall_seconds']:.0f} s; {len(r['outcomes'])} tests ({r_failed} failed); "
          f"{kept} of them shown below" + ("" if kept == len(r["outcomes"]) else " (the others were run again later)"))
    w(f"- **shown**: {passed} passed, {len(failed)} failed of {len(outcomes)} tests; fuzz scale {run['fuzz_scale']:g}")
    for k, o in sorted(failed.items()):
        w(f"  - FAILED: `{k}` ({o})")
    w("")
    w("```sh\n.venv/bin/python -m pytest -p no:cacheprovider tests/reliability tests/e2e/test_registry_clients.py "
      "tests/e2e/test_registry_cli.py\n.venv/bin/python tests/reliability/report.py   # this file, from the run\n"
      "PUSSH_FUZZ_SCALE=10 .venv/bin/python -m pytest tests/reliability/test_registry_fuzz.py   # a longer hunt "
      "(no value lowers the counts)\nCI=1 ...   # replays the same (derandomized) fuzz examples every run\n```\n")

    w("## What \"survived\" means\n")
    w("After every fault the suite checks, on the server's containerd:\n")
    w("- **the fault struck**: sshd session processes killed (>= 1), packets dropped by the block (the DROP "
      "rules' counters > 0), the registry container dead, the daemon's PID changed, pussh killed;")
    w("- **the exact outcome of the table**: pussh's exit code, the kind of its one JSON result / one-line "
      "message (no traceback), and which image the tag names (old or new), per fault and path;")
    w("- **the tag is whole**: every manifest, config and layer it reaches is present with its size, and a "
      "container of it prints the md5 of each data layer as the local image of that version does;")
    w("- **no registry left** (registry path): its keeper removes it when the SSH session ends;")
    w("- **a re-run sends exactly what is missing**: pussh's `sent` equals the blobs the server lacked, and "
      "the bytes on the server's veth are within the bounds the missing bytes allow (less what an ingest the "
      "direct path resumes already holds); the re-run leaves the new image whole and runnable;")
    w("- **no upload leftovers after lease expiry and GC**: every upload lease (`pussh-upload-*`, "
      "`pussh-hold-*`, a direct push's `pussh.push` lease) carries an expiry <= 2 h; deleted as expiry does, "
      "GC leaves no ingest, no broken image, no blob nothing references.\n")

    w("## Faults, end to end (`test_faults.py`, 64 MiB blob, link shaped to 200 Mbit/s)\n")
    w("The old image is pushed under a tag, then a new one (same lower layers, a new 64 MiB last layer) under "
      "the same tag; the fault strikes when the bytes on the server's veth say that share of the blob has "
      "crossed. Paths: `registry` (`--via registry`, the registry container) and `containerd` (`--via "
      "containerd`, direct).\n")
    w("| Fault | Path | Struck at | Evidence | Expected | Observed: exit, message | Tag after | Re-run: to send / on the wire (bound) | Test |")
    w("|---|---|---|---|---|---|---|---|---|")
    for key, r in sorted(((k, v) for k, v in rec.items() if k.startswith("test_fault_mid_push")),
                         key=lambda kv: (kv[1].get("fault", ""), kv[1].get("via", ""))):
        e = r.get("expected", {})
        ev = ", ".join(f"{k} {v}" for k, v in (r.get("evidence") or {}).items()) or "-"
        rr = r.get("rerun") or {}
        rerun = (f"{mib(rr.get('lacking_bytes'))} / {mib(rr.get('wire_bytes'))} (<= {mib((rr.get('bounds') or [0, 0])[1])})"
                 + (f"; {mib(rr['resumed_bytes'])} resumed" if rr.get("resumed_bytes") else "")) if rr else "-"
        err = (r.get("error") or "").replace("|", "\\|")
        if len(err) > 140:
            err = err[:140] + "..."
        res = next((o["outcome"] for k, o in outcomes.items() if k.endswith(key)), "?")
        w(f"| {r.get('fault')} | {r.get('via')} | {pct(r.get('struck_at'))} | {ev} | exit {e.get('rc')}, "
          f"{e.get('kind') or 'no error'}, {e.get('tag')} | exit {r.get('rc', '?')}, {r.get('kind') or 'no error'}"
          f"{': `' + err + '`' if err else ''} | {r.get('tag', '?')} | {rerun} | {res} |")
    w("")

    w("## Concurrency (`test_concurrency.py`)\n")
    w("| Case | Path | Outcome | Test |\n|---|---|---|---|")
    for key, r in sorted(rec.items()):
        res = next((o["outcome"] for k, o in outcomes.items() if k.endswith(key)), "?")
        if key.startswith("test_two_images_to_one_tag_at_once"):
            w(f"| Two machines push different images to `race/app:1` at once, 3 rounds (same lower layers on both) "
              f"| {r['via']} | both succeeded in {r['both_succeeded']} of {r['rounds']} rounds; tag whole and "
              f"runnable; winners {', '.join(r['winners'])} | {res} |")
        elif key.startswith("test_ten_pushes_sharing_layers"):
            w(f"| Ten pussh processes push ten images sharing busybox and 16 MiB to one server at once | {r['via']} "
              f"| {r['succeeded']} of {r['pushes']} succeeded, each whole and runnable; {mib(r['wire_bytes'])} on the "
              f"wire: the shared layers ({mib(r['shared_bytes'])}) crossed {r['shared_crossings']:.2f} times "
              f"(pussh reports {r['reported_crossings']:.2f}; asserted: equal within 0.25; the pushes do not coordinate, "
              f"so the count is timing) | {res} |")
    w("")

    w("## Server disk nearly full (`test_disk_full.py`)\n")
    w("The server's `/var/lib/containerd` is a 700 MB tmpfs in its mount namespace; space is taken with "
      "`fallocate`d files.\n")
    w("| Case | Path | Outcome | Re-run: to send / on the wire (bound) | Test |\n|---|---|---|---|---|")
    for key, r in sorted(rec.items()):
        res = next((o["outcome"] for k, o in outcomes.items() if k.endswith(key)), "?")
        rr = r.get("rerun") or {}
        rerun = f"{mib(rr.get('lacking_bytes'))} / {mib(rr.get('wire_bytes'))} (<= {mib((rr.get('bounds') or [0, 0])[1])})" \
            if rr else "-"
        err = (r.get("error") or "").replace("|", "\\|")
        if key.startswith("test_push_that_cannot_fit"):
            w(f"| 20 MiB free, 64 MiB to send | {r['via']} | exit {r['rc']}, `{err}`; "
              f"{r['refused_wire_bytes']} bytes on the wire (<= 256 KiB); old tag whole | {rerun} | {res} |")
        elif key.startswith("test_disk_filling_up"):
            w(f"| At {pct(r.get('struck_at'))} of the 64 MiB blob all but 256 KiB is taken | {r['via']} | exit {r['rc']}, "
              f"`{err}`; big blob not committed; old tag whole; no leftover after expiry + GC | {rerun} | {res} |")
    w("")

    w("## Bad input to the registry (`test_registry_fuzz.py`, hypothesis)\n")
    w("The registry runs as its real process (`python -m registry`, with a token) against a real containerd; a "
      "raw HTTP client writes each request byte for byte. For every request: a success or a 4xx with a spec "
      "error code, never a 5xx; never a dropped connection, except for a request whose head exceeds 64 KiB "
      "(aiohttp answers 400 after its 8190-byte line limit and closes; the unread rest can reset the connection "
      "under the answer); no ERROR or traceback in the registry's log; after each test every image record "
      "complete and every tag where the last successful PUT left it.\n")
    w("| Input class | Expected | Requests (this run) | Test |\n|---|---|---|---|")
    reqs = run["requests"]
    total = 0
    for name, desc in FUZZ_CLASSES.items():
        n = sum(v for k, v in reqs.items() if k.split("[")[0] == name)
        total += n
        res = [o["outcome"] for k, o in outcomes.items() if k.split("::")[-1].split("[")[0] == name
               and "test_registry_fuzz" in k]
        state = "-" if not res else ("passed" if all(x == "passed" for x in res) else "FAILED")
        w(f"| {desc} | {n} | {state} ({len(res)}) |")
    setup = sum(v for k, v in reqs.items() if k.startswith("fuzz setup"))
    total += setup
    w(f"| (seed image) | | {setup} | |")
    w(f"| **Total** | | **{total}** | |\n")
    huge = {k[5:]: v for r in rec.values() for k, v in r.items() if k.startswith("huge:")}
    if huge:
        w("Huge and odd requests, answers: " + ", ".join(f"{k} {v}" for k, v in sorted(huge.items())) + ".")
    ms = next((r for k, r in rec.items() if k.startswith("test_manifest_fuzz_required_valid_ones")), None)
    if ms:
        w(f"Manifests: {ms['must-accept']} drawn bodies were valid and each was accepted; {ms['accepted']} accepted in all.")
    fr = next((r for k, r in rec.items() if k.startswith("test_request_count")), None)
    if fr:
        w(f"The module's own count: {fr['fuzz_requests']} requests (floor 10,000).")
    w("")

    w("## Security (`test_security.py`)\n")
    w("| Check | Test |\n|---|---|")
    for name, desc in SECURITY.items():
        res = [o["outcome"] for k, o in outcomes.items() if "test_security" in k and f"::{name}" in k]
        state = "-" if not res else ("passed" if all(x == "passed" for x in res) else "FAILED") + \
            (f" ({len(res)})" if len(res) > 1 else "")
        w(f"| {desc} | {state} |")
    w("")

    clients = [(k, o) for k, o in sorted(outcomes.items()) if "test_registry_clients" in k or "test_registry_cli" in k]
    if clients:
        w("## The standalone registry with real clients (`tests/e2e/test_registry_clients.py`, `test_registry_cli.py`)\n")
        w("docker (containerd and classic stores), skopeo and podman push to and pull from `python -m registry`; "
          "its command line, listeners, logging and shutdown.\n")
        w("| Test | Outcome | Seconds |\n|---|---|---|")
        for k, o in clients:
            w(f"| `{k.split('/')[-1]}` | {o['outcome']} | {o['seconds']:.1f} |")
        w("")

    w("## Bugs found and fixed\n")
    w(BUGS)
    w("## Not covered / limits\n")
    w(LIMITS)
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, action="append", help="a run's JSON (repeatable; default: out/*.json)")
    ap.add_argument("--out", type=Path, default=DOC)
    ap.add_argument("--check", action="store_true", help="fail if --out differs from what --run gives")
    args = ap.parse_args()
    files = args.run or sorted(OUT.glob("*.json"))
    text = render(merge([json.loads(f.read_text()) for f in files]))
    if args.check:
        if args.out.read_text() != text:
            print(f"{args.out} is not what {', '.join(map(str, files))} give: run report.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
