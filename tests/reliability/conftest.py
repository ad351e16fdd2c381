"""The reliability suite (see tests/RELIABILITY.md): faults, bad input and concurrency against the
real daemons of the test bed. Reuses the support modules of tests/e2e."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent / "e2e"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import relsupport  # noqa: E402

# Hypothesis examples per fuzz test: the committed counts are the floor (CI sends >= 10,000 requests);
# PUSSH_FUZZ_SCALE=10 raises them for a longer hunt, and no value lowers them.
FUZZ_SCALE = max(1.0, float(os.environ.get("PUSSH_FUZZ_SCALE", "1") or "1"))

# CI replays the same examples every run (a red CI is then a regression, not a new draw); a developer's
# run draws new ones.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _count_requests(request):
    relsupport.set_counter(request.node.nodeid.split("::", 1)[-1])
    yield


OUT = HERE / "out" / "run.json"
# Started when this conftest loads: pytest_sessionstart is not called for a conftest found during
# collection (as this one is when the run starts at tests/).
_RUN: dict = {"outcomes": {}, "started": time.time()}


class _Outcomes:
    """Registered as a plugin: a conftest's own runtest hooks see only the tests under its directory,
    and the run's record also covers tests/e2e/test_registry_clients.py and test_registry_cli.py."""

    @staticmethod
    def pytest_runtest_logreport(report):
        _logreport(report)


def pytest_configure(config):
    config.pluginmanager.register(_Outcomes(), "reliability-outcomes")


def _logreport(report):
    o = _RUN["outcomes"].setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0})
    o["seconds"] = round(o["seconds"] + report.duration, 2)
    if report.failed:
        o["outcome"] = "failed" if report.when == "call" else f"error in {report.when}"
    elif report.skipped and o["outcome"] == "passed":
        o["outcome"] = "skipped"


def _git(*args: str) -> str:
    import subprocess
    cp = subprocess.run(["git", *args], cwd=HERE.parents[1], capture_output=True, text=True)
    return cp.stdout.rstrip("\n")  # (not strip: porcelain lines begin with a space)


def pytest_sessionfinish(session, exitstatus):
    """The run's raw record: tests/reliability/out/run.json (when any reliability test ran)."""
    import json
    import time
    if not any(n.startswith("tests/reliability/") for n in _RUN["outcomes"]):
        return
    now = time.time()
    run = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(_RUN["started"])),
        "commit": _git("rev-parse", "HEAD").strip(),
        # what ran besides the commit: every uncommitted file of the tree (others' work in progress too)
        "uncommitted": [l[3:] for l in _git("status", "--porcelain", "--untracked-files=no").splitlines()
                        if "tests/reliability/out/" not in l and not l[3:].endswith("RELIABILITY.md")],
        "args": list(session.config.invocation_params.args),
        "wall_seconds": round(now - _RUN["started"], 1),
        "exitstatus": int(exitstatus),
        "fuzz_scale": FUZZ_SCALE,
        "ci": bool(os.environ.get("CI")),
        "requests": dict(sorted((k, v) for k, v in relsupport.COUNTS.items() if v)),
        "outcomes": _RUN["outcomes"],
        "records": relsupport.RECORDS,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = {k: v for k, v in relsupport.COUNTS.items() if v}
    if not counts:
        return
    tr = terminalreporter
    tr.section("reliability: requests sent to the registry")
    for name, n in sorted(counts.items()):
        tr.write_line(f"{n:7d}  {name}")
    tr.write_line(f"{sum(counts.values()):7d}  total")


# This suite kills and restarts the server's daemons, fills its disk and changes its host key, so it
# runs on hosts of its own rather than tests/conftest.py's shared ones; `_start` is the same
# start-or-fail as there (one conftest cannot import another's helpers: both are named `conftest`).
def _start(factory, what: str):
    from testbed import TestbedError
    try:
        return factory()
    except TestbedError as e:  # a daemon that cannot start fails the test, with its reason
        pytest.fail(f"test bed: {what} did not start: {e}", pytrace=False)


@pytest.fixture(scope="session")
def rel_local():
    """The local Docker host (containerd store) of the reliability suite, with the registry image."""
    from pussh_support import build_registry_image
    from testbed import LocalHost
    h = _start(lambda: LocalHost("containerd"), "local host")
    try:
        build_registry_image(h)
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="session")
def rel_remote():
    """The server (containerd store) the fault, concurrency and security tests push to."""
    from testbed import RemoteHost
    h = _start(lambda: RemoteHost("containerd"), "remote host")
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="session")
def rel_env(rel_local, rel_remote):
    """(local, remote) with the registry image already on the server: a first push carries it, and
    a test that measures or races pushes must not count that transfer."""
    from relhosts import push
    from testbed import build_test_image
    build_test_image(rel_local, "warmup/app:1", [0.5], seed="warmup", text_mb=0.1)
    push(rel_local, rel_remote, "warmup/app:1", "--via", "registry")  # carries the registry image
    return rel_local, rel_remote
