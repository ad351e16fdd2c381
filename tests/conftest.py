"""Shared fixtures: real local and remote Docker hosts from the `testbed` package.

Tests that use them are marked `e2e` automatically. If the test bed cannot start (not root, a daemon
missing, a daemon failing) the fixture FAILS with the reason and the daemon's log tail: never skips.
"""
from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest

from testbed import LocalHost, RemoteHost, TestbedError

TESTBED_FIXTURES = {"local_host", "local_host_classic", "remote_host", "remote_host_classic", "make_remote",
                    "make_local"}


def _sigterm(signum, frame):  # a CI timeout's SIGTERM: unwind like Ctrl-C so finalizers stop the daemons
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config: pytest.Config) -> None:
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a shell without job control (nohup ... &), the suite inherits
        # SIGINT ignored, and so would every pussh it starts: the Ctrl-C tests would interrupt nothing
        # (seen in the fresh-root check). A terminal's Ctrl-C is what they stand for: restore it.
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TESTBED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


def _start(factory: Callable[[], LocalHost | RemoteHost], what: str):
    # the constructors clean up after themselves when they fail half-way
    try:
        return factory()
    except TestbedError as e:
        pytest.fail(f"test bed: {what} did not start: {e}", pytrace=False)


@pytest.fixture(scope="session")
def local_host() -> Iterator[LocalHost]:
    """Local Docker host, containerd image store (DOCKER_HOST etc. in .env)."""
    h = _start(lambda: LocalHost("containerd"), "local host (containerd store)")
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="session")
def local_host_classic() -> Iterator[LocalHost]:
    h = _start(lambda: LocalHost("classic"), "local host (classic store)")
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="session")
def remote_host() -> Iterator[RemoteHost]:
    """Remote Docker host over SSH, containerd image store, unshaped. Tests that shape it must unshape."""
    h = _start(lambda: RemoteHost("containerd"), "remote host (containerd store)")
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="session")
def remote_host_classic() -> Iterator[RemoteHost]:
    h = _start(lambda: RemoteHost("classic"), "remote host (classic store)")
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def make_remote() -> Iterator[Callable[..., RemoteHost]]:
    """Factory for extra remotes owned by one test: make_remote(store="classic", rate="100mbit", delay="5ms")."""
    made: list[RemoteHost] = []

    def make(store: str = "containerd", rate: str | None = None, delay: str | float | None = None) -> RemoteHost:
        h = _start(lambda: RemoteHost(store, rate=rate, delay=delay), f"extra remote host ({store} store)")  # type: ignore[arg-type]
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in reversed(made):
            h.stop()


@pytest.fixture
def make_local() -> Iterator[Callable[..., LocalHost]]:
    """Factory for extra local hosts owned by one test: make_local(store="classic")."""
    made: list[LocalHost] = []

    def make(store: str = "containerd") -> LocalHost:
        h = _start(lambda: LocalHost(store), f"extra local host ({store} store)")  # type: ignore[arg-type]
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in reversed(made):
            h.stop()
