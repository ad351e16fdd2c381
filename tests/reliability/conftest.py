"""The reliability suite (see tests/RELIABILITY.md): faults, bad input and concurrency against the
real daemons of the test bed. Reuses the support modules of tests/e2e."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent / "e2e"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import relsupport  # noqa: E402

# Hypothesis examples per fuzz test: bounded for CI; PUSSH_FUZZ_SCALE=10 for a longer hunt.
FUZZ_SCALE = float(os.environ.get("PUSSH_FUZZ_SCALE", "1"))

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
    push(rel_local, rel_remote, "warmup/app:1")
    return rel_local, rel_remote
