"""`python -m registry` as a process: the one stdout line, TCP and unix listeners, options by
environment, the token never on argv, JSON logs, graceful SIGTERM with an upload in flight."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess

import aiohttp
import pytest

from ctrd import Containerd
from regsupport import PYTHON, REPO_ROOT, bare_containerd, sha, start_registry_process

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sock(tmp_path_factory):
    with bare_containerd(tmp_path_factory.mktemp("regcli")) as s:
        yield s


def get(url: str, path: str = "/v2/", headers: dict | None = None, unix: str | None = None) -> tuple[int, dict]:
    async def go():
        connector = aiohttp.UnixConnector(path=unix) if unix else None
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.get(url + path, headers=headers or {}) as r:
                return r.status, dict(r.headers)
    return asyncio.run(go())


def test_listening_line_port_zero_and_clean_exit(sock, tmp_path):
    reg = start_registry_process(tmp_path, ["--listen", "127.0.0.1:0", "--containerd", sock])
    assert reg.address.startswith("http://127.0.0.1:") and reg.port > 0
    assert get(reg.address)[0] == 200
    assert reg.stop(signal.SIGINT) == 0
    assert reg.proc.stdout.read() == ""  # exactly one line on stdout, ever


def test_unix_socket_listener(sock, tmp_path):
    path = str(tmp_path / "reg.sock")
    reg = start_registry_process(tmp_path, ["--listen", path, "--containerd", sock])
    try:
        assert reg.address == f"unix:{path}"
        assert get("http://localhost", unix=path)[0] == 200
    finally:
        assert reg.stop() == 0


def test_options_from_environment_and_token(sock, tmp_path):
    env = {"PUSSH_REGISTRY_LISTEN": "127.0.0.1:0", "PUSSH_REGISTRY_CONTAINERD": sock,
           "PUSSH_REGISTRY_NAMESPACE": "envns", "PUSSH_REGISTRY_TOKEN": "t0ken",
           "PUSSH_REGISTRY_LOG_FORMAT": "json", "PUSSH_REGISTRY_LOG_LEVEL": "debug"}
    reg = start_registry_process(tmp_path, [], env=env)
    try:
        status, headers = get(reg.address)
        assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="pussh-registry"'
        assert get(reg.address, headers={"Authorization": "Bearer t0ken"})[0] == 200
    finally:
        assert reg.stop() == 0

    async def namespaces():
        async with Containerd(sock, "envns") as c:
            return await c.leases.list()
    assert asyncio.run(namespaces()), "the registry did not use the namespace from the environment"
    lines = [line for line in reg.stderr().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert any("GET /v2/" in r["msg"] for r in records)
    assert any(r["level"] == "debug" for r in records), records  # the level from the environment took effect
    # and the same at the default level (info) logs no debug record: the level, not chance, decides
    reg = start_registry_process(tmp_path, [], env={**env, "PUSSH_REGISTRY_LOG_LEVEL": "info"})
    try:
        assert get(reg.address, headers={"Authorization": "Bearer t0ken"})[0] == 200
    finally:
        assert reg.stop() == 0
    records = [json.loads(line) for line in reg.stderr().splitlines() if line.strip()]
    assert any("GET /v2/" in r["msg"] for r in records)
    assert not [r for r in records if r["level"] == "debug"], records


def test_token_is_refused_on_argv_and_bad_options(sock, tmp_path):
    for args in (["--token", "x"], ["--listen", "nonsense"], ["--upload-expiry", "0"],
                 ["--token-file", str(tmp_path / "missing")], ["--log-format", "xml"]):
        cp = subprocess.run([PYTHON, "-m", "registry", "--containerd", sock, *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
        assert cp.returncode == 2 and cp.stdout == "", (args, cp)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cp = subprocess.run([PYTHON, "-m", "registry", "--token-file", str(empty)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2 and "empty" in cp.stderr


def test_no_containerd_is_a_clear_error(tmp_path):
    cp = subprocess.run([PYTHON, "-m", "registry", "--listen", "127.0.0.1:0", "--containerd",
                         str(tmp_path / "none.sock")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and "none.sock" in cp.stderr and "Traceback" not in cp.stderr
    assert cp.stdout == ""


def test_sigterm_finishes_the_upload_in_flight(sock, tmp_path):
    reg = start_registry_process(tmp_path, ["--listen", "127.0.0.1:0", "--containerd", sock])
    data = os.urandom(24 << 20)
    sent = asyncio.Event()

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.post(reg.address + "/v2/graceful/blobs/uploads/") as r:
                loc = r.headers["Location"]

            async def body():
                for i in range(0, len(data), 1 << 20):
                    yield data[i:i + (1 << 20)]
                    if i == 4 << 20:
                        sent.set()
                    await asyncio.sleep(0.05)

            async def stop_midway():
                await sent.wait()
                reg.proc.send_signal(signal.SIGTERM)

            stopper = asyncio.create_task(stop_midway())
            async with s.put(f"{reg.address}{loc}?digest={sha(data)}", data=body()) as r:
                status = r.status
            await stopper
            return status

    assert asyncio.run(go()) == 201
    assert reg.proc.wait(30) == 0

    async def present():
        async with Containerd(sock, "moby") as c:
            return await c.content.exists(sha(data))
    assert asyncio.run(present()) is not None
    assert "Traceback" not in reg.stderr()
