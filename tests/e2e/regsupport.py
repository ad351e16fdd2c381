"""Support for the registry's tests: a bare containerd of our own, the registry app served on a
loopback port (in process, or as the real `python -m registry` process), and blob/manifest makers.
Imported by tests/e2e/test_registry_*.py."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from oci import mediatypes as MT
from registry.app import Config, make_app

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python") if (REPO_ROOT / ".venv").exists() else sys.executable


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- a bare containerd ---------------------------------------------------------------------------

@contextlib.contextmanager
def bare_containerd(d: Path) -> Iterator[str]:
    """containerd with its own root, state and socket under `d`; stopped by its PID."""
    if os.geteuid() != 0:
        pytest.fail("the registry tests start a real containerd and need root")
    if not shutil.which("containerd"):
        pytest.fail("containerd is not installed: run scripts/install-system.sh")
    sock = str(d / "containerd.sock")
    (d / "config.toml").write_text(
        f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[plugins."io.containerd.internal.v1.opt"]\n  path = "{d}/opt"\n'
    )
    log = open(d / "containerd.log", "wb")
    proc = subprocess.Popen(["containerd", "--config", str(d / "config.toml")], stdout=log, stderr=log,
                            start_new_session=True)
    try:
        for _ in range(200):
            if os.path.exists(sock) or proc.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(sock):
            pytest.fail(f"containerd did not start: {(d / 'containerd.log').read_text()[-2000:]}")
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- the registry in process ---------------------------------------------------------------------

@dataclass
class Registry:
    """The app on a loopback port, with a client session and the containerd it stores into."""

    url: str
    session: aiohttp.ClientSession
    socket: str
    namespace: str
    headers: dict[str, str] = field(default_factory=dict)

    def u(self, path: str) -> str:
        return self.url + path

    def request(self, method: str, path: str, **kw):
        headers = {**self.headers, **kw.pop("headers", {})}
        return self.session.request(method, self.u(path), headers=headers, allow_redirects=False, **kw)

    async def call(self, method: str, path: str, **kw) -> tuple[int, dict, bytes]:
        async with self.request(method, path, **kw) as r:
            return r.status, dict(r.headers), await r.read()

    async def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha(data)
        status, headers, body = await self.call("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data=data)
        assert status == 201, (status, body)
        return digest

    async def push_manifest(self, repo: str, ref: str, manifest: dict | bytes, media_type: str | None = None) -> str:
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        mt = media_type or (json.loads(body).get("mediaType") if body else None) or MT.OCI_MANIFEST
        status, headers, resp = await self.call("PUT", f"/v2/{repo}/manifests/{ref}", data=body,
                                                headers={"Content-Type": mt})
        assert status == 201, (status, resp)
        assert headers["Docker-Content-Digest"] == sha(body)
        return sha(body)


@contextlib.asynccontextmanager
async def serve(socket: str, namespace: str, **config):
    app = make_app(Config(containerd_socket=socket, namespace=namespace, **config))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Registry(str(server.make_url("")).rstrip("/"), session, socket, namespace)
    finally:
        await server.close()


def error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


# -- images made by hand -------------------------------------------------------------------------

def layer_tar(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, mtime=0)


@dataclass
class HandImage:
    """A small image: config + gzip layers + manifest, with what a test needs to check them."""

    config: bytes
    layers: list[bytes]
    diff_ids: list[str]
    manifest: dict
    media_type: str

    @property
    def body(self) -> bytes:
        return json.dumps(self.manifest).encode()

    @property
    def digest(self) -> str:
        return sha(self.body)

    def blobs(self) -> list[bytes]:
        return [self.config, *self.layers]


def hand_image(seed: str, n_layers: int = 2, *, docker: bool = False, arch: str = "amd64",
               layer_size: int = 1024, runnable: bool = False) -> HandImage:
    """Random layers; `runnable` adds a first layer with the static busybox and a Cmd."""
    tars = [layer_tar({f"{seed}-{i}.txt": (seed + os.urandom(layer_size // 2).hex()).encode()})
            for i in range(n_layers)]
    if runnable:
        tars.insert(0, layer_tar({"bin/busybox": Path("/bin/busybox").read_bytes()}))
    layers = [gzip_bytes(t) for t in tars]
    diff_ids = [sha(t) for t in tars]
    cmd = {"Cmd": ["/bin/busybox", "cat", f"/{seed}-0.txt"]} if runnable else {}
    config = json.dumps({"architecture": arch, "os": "linux", "config": cmd,
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    if docker:
        mt, cmt, lmt = MT.DOCKER_MANIFEST, MT.DOCKER_CONFIG, MT.DOCKER_LAYER_GZIP
    else:
        mt, cmt, lmt = MT.OCI_MANIFEST, MT.OCI_CONFIG, MT.OCI_LAYER_GZIP
    manifest = {
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": cmt, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": lmt, "digest": sha(l), "size": len(l)} for l in layers],
    }
    return HandImage(config, layers, diff_ids, manifest, mt)


def index_of(images: dict[str, HandImage], *, docker: bool = False) -> dict:
    mt = MT.DOCKER_MANIFEST_LIST if docker else MT.OCI_INDEX
    return {
        "schemaVersion": 2, "mediaType": mt,
        "manifests": [{"mediaType": img.media_type, "digest": img.digest, "size": len(img.body),
                       "platform": {"os": "linux", "architecture": arch}} for arch, img in images.items()],
    }


def write_oci_layout(d: Path, tags: dict[str, tuple[bytes, str]], blobs: list[bytes]) -> None:
    """An OCI image layout: `tags` maps a ref name to (manifest or index body, media type)."""
    (d / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for blob in blobs + [body for body, _ in tags.values()]:
        (d / "blobs" / "sha256" / sha(blob).split(":")[1]).write_bytes(blob)
    index = {"schemaVersion": 2, "mediaType": MT.OCI_INDEX, "manifests": [
        {"mediaType": mt, "digest": sha(body), "size": len(body),
         "annotations": {"org.opencontainers.image.ref.name": tag}} for tag, (body, mt) in tags.items()]}
    (d / "index.json").write_text(json.dumps(index))


def read_oci_layout(d: Path) -> dict[str, bytes]:
    """Every blob of a layout by digest."""
    return {"sha256:" + p.name: p.read_bytes() for p in (d / "blobs" / "sha256").iterdir()}


# -- the registry as a process ---------------------------------------------------------------------

@dataclass
class RegistryProcess:
    proc: subprocess.Popen
    address: str  # http://127.0.0.1:PORT or unix:PATH
    stderr_path: Path

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_registry_process(tmp: Path, args: list[str], env: dict[str, str] | None = None,
                           timeout: float = 30) -> RegistryProcess:
    """`python -m registry ARGS`; waits for its one stdout line and returns where it listens."""
    err_path = tmp / f"registry-{time.monotonic_ns()}.err"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PUSSH_REGISTRY_")}
    full_env.update(env or {})
    proc = subprocess.Popen([PYTHON, "-m", "registry", *args], cwd=REPO_ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=open(err_path, "wb"), text=True)
    line = _readline(proc, timeout)
    if not line:
        proc.kill()
        proc.wait()
        pytest.fail(f"the registry did not start: {err_path.read_text(errors='replace')[-3000:]}")
    prefix = "pussh-registry listening on "
    assert line.startswith(prefix), line
    address = line[len(prefix):].strip()
    if address.startswith("http://"):
        address = address
    return RegistryProcess(proc, address, err_path)


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(0.1):
            return proc.stdout.readline()
        if proc.poll() is not None:
            return ""
    return ""


async def wait_gone(check, timeout: float = 20.0) -> bool:
    """Poll an async predicate until true (for GC and expiry, which are not instantaneous)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.2)
    return False


ONE_SECOND = timedelta(seconds=1)


# -- the registry's Docker image -------------------------------------------------------------------

PYBASE_IMAGE = "pussh-test/pybase:bookworm"


def import_python_base(host) -> str:
    """A Debian bookworm + python3 base on `host` for BASE_IMAGE: `docker import` of the rootfs the
    test bed debootstraps and caches (one debootstrap for the whole suite; nothing is pulled)."""
    from testbed import build_python_base

    return build_python_base(host, PYBASE_IMAGE)
