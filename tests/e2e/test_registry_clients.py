"""The registry with real clients: `docker push`/`pull` from dockerd with the containerd image store
and with the classic store, `skopeo copy` in and out (a multi-platform index included), `podman
push`/`pull`, and the server's own Docker running what was pushed with no pull. The registry runs as its real process
(`python -m registry`) on the containerd of a test-bed host."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from ctrd import Containerd
from oci import mediatypes as MT
from regsupport import (PYTHON, REPO_ROOT, hand_image, index_of, read_oci_layout, sha,
                        start_registry_process, write_oci_layout)
from testbed.local import LocalHost

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server():
    """Host H: the registry stores into its containerd; its dockerd (containerd store) sees the images."""
    with LocalHost("containerd") as h:
        yield h


@pytest.fixture(scope="module")
def client():
    with LocalHost("containerd") as h:
        yield h


@pytest.fixture(scope="module")
def client2():
    with LocalHost("containerd") as h:
        yield h


@pytest.fixture(scope="module")
def classic():
    with LocalHost("classic") as h:
        yield h


@pytest.fixture(scope="module")
def registry(server, tmp_path_factory):
    proc = start_registry_process(tmp_path_factory.mktemp("reg"), [
        "--listen", "127.0.0.1:0", "--containerd", server.containerd_socket, "--namespace", "moby"])
    yield proc
    assert proc.stop() == 0, proc.stderr()[-3000:]
    assert "Traceback" not in proc.stderr(), proc.stderr()[-5000:]


def build(host, tag: str, ctx: Path, size: int = 2 << 20) -> str:
    """A FROM-scratch image with busybox and `size` random bytes; returns the data's sha256."""
    (ctx / "bin").mkdir(parents=True, exist_ok=True)
    (ctx / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (ctx / "bin" / "busybox").chmod(0o755)
    data = os.urandom(size)
    (ctx / "data.bin").write_bytes(data)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY bin/ /bin/\nCOPY data.bin /data.bin\n"
                                    'CMD ["/bin/busybox", "sha256sum", "/data.bin"]\n')
    host.docker("build", "-q", "--network", "none", "-t", tag, str(ctx), timeout=300)
    return sha(data).split(":")[1]


def run_sum(host, ref: str) -> str:
    out = host.docker("run", "--rm", "--pull", "never", "--network", "host", ref, timeout=120).stdout
    return out.split()[0]


def skopeo(*args: str) -> subprocess.CompletedProcess:
    cp = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr
    return cp


async def image_target(server, name: str):
    async with Containerd(server.containerd_socket, "moby") as c:
        return (await c.images.get(name)).target


def test_docker_push_containerd_store_then_run_on_server_and_pull(server, client, client2, classic, registry,
                                                                   tmp_path):
    ref = f"{registry.host_port}/app/one:1"
    want = build(client, ref, tmp_path)
    client.docker("push", ref, timeout=300)
    # On H the image is there at once, under the name Docker gives `app/one:1`; no pull.
    assert server.has_image("app/one:1")
    assert run_sum(server, "app/one:1") == want
    # Pulled back by Docker: a fresh containerd-store host, and a classic-store one.
    for host in (client2, classic):
        host.docker("pull", ref, timeout=300)
        assert run_sum(host, ref) == want


def test_docker_push_classic_store(server, classic, client2, registry, tmp_path):
    ref = f"{registry.host_port}/classic/app:2"
    want = build(classic, ref, tmp_path, size=5 << 20)
    classic.docker("push", ref, timeout=300)  # the classic push: PATCH streamed, then PUT
    assert run_sum(server, "classic/app:2") == want
    target = asyncio.run(image_target(server, "docker.io/classic/app:2"))
    assert target.media_type == MT.DOCKER_MANIFEST
    client2.docker("pull", ref, timeout=300)
    assert run_sum(client2, ref) == want


def test_skopeo_copy_in_and_out(server, registry, tmp_path):
    img = hand_image("sk", runnable=True)
    src = tmp_path / "src"
    write_oci_layout(src, {"v1": (img.body, img.media_type)}, img.blobs())
    skopeo("copy", "--dest-tls-verify=false", f"oci:{src}:v1", f"docker://{registry.host_port}/sk/img:v1")
    assert server.docker("image", "inspect", "sk/img:v1", check=False).returncode == 0
    out = tmp_path / "out"
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host_port}/sk/img:v1", f"oci:{out}:v1")
    blobs = read_oci_layout(out)
    assert blobs[img.digest] == img.body  # the manifest came back byte for byte
    for blob in img.blobs():
        assert blobs[sha(blob)] == blob
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                            f"docker://{registry.host_port}/sk/img:v1").stdout)
    assert raw == img.manifest
    assert run_sum_text(server, "sk/img:v1").startswith("sk")


def run_sum_text(host, ref: str) -> str:
    return host.docker("run", "--rm", "--pull", "never", "--network", "host", ref, timeout=120).stdout


def test_multiplatform_index_round_trip(server, registry, tmp_path):
    images = {"amd64": hand_image("mpa", runnable=True), "arm64": hand_image("mpb", arch="arm64", runnable=True)}
    index = index_of(images)
    index_body = json.dumps(index).encode()
    src = tmp_path / "src"
    write_oci_layout(src, {"multi": (index_body, MT.OCI_INDEX)},
                     [b for img in images.values() for b in [*img.blobs(), img.body]])
    skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{src}:multi",
           f"docker://{registry.host_port}/multi/arch:1")
    target = asyncio.run(image_target(server, "docker.io/multi/arch:1"))
    assert target.digest == sha(index_body) and target.media_type == MT.OCI_INDEX
    out = tmp_path / "out"
    skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{registry.host_port}/multi/arch:1", f"oci:{out}:m")
    blobs = read_oci_layout(out)
    assert blobs[sha(index_body)] == index_body
    for img in images.values():
        assert blobs[img.digest] == img.body
        for blob in img.blobs():
            assert blobs[sha(blob)] == blob
    # the server's Docker runs its platform's image from the index, with no pull
    assert run_sum_text(server, "multi/arch:1").startswith("mpa")


def podman(store: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """podman (Debian's, from scripts/install-system.sh) with a storage of its own under `store`
    (vfs: no mounts to undo), never the machine's /var/lib/containers."""
    if not shutil.which("podman"):
        pytest.fail("podman is not installed: run scripts/install-system.sh")
    argv = ["podman", "--root", str(store / "root"), "--runroot", str(store / "run"), "--tmpdir", str(store / "tmp"),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert cp.returncode == 0, (argv, cp.stdout, cp.stderr)
    return cp


def podman_file_sha(store: Path, ref: str, path: str) -> str:
    """sha256 of a file in the image, read from an exported container of it (podman cannot start
    containers in this sandbox: runc may not set podman's rlimits; creating and exporting needs none)."""
    cid = podman(store, "create", "--network", "none", ref).stdout.strip()
    try:
        tar = subprocess.run(["podman", "--root", str(store / "root"), "--runroot", str(store / "run"),
                              "--storage-driver", "vfs", "--events-backend", "file", "export", cid],
                             capture_output=True, timeout=300)
        assert tar.returncode == 0, tar.stderr
        import io
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
            return sha(t.extractfile(path.lstrip("/")).read()).split(":")[1]
    finally:
        podman(store, "rm", cid)


def test_podman_push_then_run_on_server_and_pull(server, registry, tmp_path):
    """podman builds (COPY only, no container run) and pushes to the registry; the server's Docker
    runs the image with no pull; a second, empty podman storage pulls it back byte for byte."""
    ref = f"{registry.host_port}/pod/app:1"
    ctx = tmp_path / "ctx"
    (ctx / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", ctx / "bin" / "busybox")
    data = os.urandom(3 << 20)
    (ctx / "data.bin").write_bytes(data)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY bin/ /bin/\nCOPY data.bin /data.bin\n"
                                    'CMD ["/bin/busybox", "sha256sum", "/data.bin"]\n')
    import tempfile
    # podman refuses a runroot path over 50 characters: short directories of our own, removed after
    a, b = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp")), Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))
    try:
        _podman_round_trip(server, ref, ctx, a, b, sha(data).split(":")[1])
    finally:
        shutil.rmtree(a, ignore_errors=True)
        shutil.rmtree(b, ignore_errors=True)


def _podman_round_trip(server, ref: str, ctx: Path, a: Path, b: Path, want: str) -> None:
    podman(a, "build", "-q", "--network", "none", "-t", ref, str(ctx))
    podman(a, "push", "--tls-verify=false", "--digestfile", str(a / "digest"), ref)
    assert run_sum(server, "pod/app:1") == want  # on the server at once, runnable by its Docker
    pushed = (a / "digest").read_text().strip()
    assert asyncio.run(image_target(server, "docker.io/pod/app:1")).digest == pushed
    podman(b, "pull", "--tls-verify=false", ref)
    pulled = json.loads(podman(b, "image", "inspect", ref).stdout)[0]
    assert pulled["Digest"] == pushed
    assert podman_file_sha(b, ref, "/data.bin") == want


def test_concurrent_pushes_of_one_image(server, client, registry, tmp_path):
    """The same image pushed by several clients at once: every push succeeds. Docker pushes from one
    daemon (a copy made with save/load on another host can lack the attestation manifests its index
    names, which a registry rightly refuses), and skopeo copies of one multi-platform layout."""
    ref = f"{registry.host_port}/race/img:1"
    want = build(client, ref, tmp_path / "ctx", size=8 << 20)
    procs = [subprocess.Popen(["docker", "push", ref], env={**os.environ, **client.env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    images = {"amd64": hand_image("racea", runnable=True, layer_size=4 << 20),
              "arm64": hand_image("raceb", arch="arm64", layer_size=4 << 20)}
    index_body = json.dumps(index_of(images)).encode()
    src = tmp_path / "layout"
    write_oci_layout(src, {"m": (index_body, MT.OCI_INDEX)},
                     [b for img in images.values() for b in [*img.blobs(), img.body]])
    procs += [subprocess.Popen(["skopeo", "--insecure-policy", "copy", "--all", "--dest-tls-verify=false",
                                f"oci:{src}:m", f"docker://{registry.host_port}/race/multi:1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    results = [(p.wait(300), p.stdout.read()) for p in procs]
    assert [rc for rc, _ in results] == [0] * len(procs), results
    assert run_sum(server, "race/img:1") == want
    assert asyncio.run(image_target(server, "docker.io/race/multi:1")).digest == sha(index_body)


def test_server_side_login_and_pull_with_token(server, client, tmp_path_factory, tmp_path):
    token = "tok-" + os.urandom(8).hex()
    d = tmp_path_factory.mktemp("regtok")
    (d / "token").write_text(token + "\n")
    proc = start_registry_process(d, ["--listen", "127.0.0.1:0", "--containerd", server.containerd_socket,
                                      "--token-file", str(d / "token")])

    def docker(host, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        # a private DOCKER_CONFIG: `docker login` must not touch the machine's ~/.docker
        env = {**os.environ, **host.env, "DOCKER_CONFIG": str(d / f"dockercfg-{host.n}")}
        return subprocess.run(["docker", *args], env=env, input=input, capture_output=True, text=True, timeout=300)

    try:
        ref = f"{proc.host_port}/secured/app:1"
        build(client, ref, tmp_path)
        denied = docker(client, "push", ref)
        assert denied.returncode != 0 and "no basic auth credentials" in denied.stderr, denied
        assert not server.has_image("secured/app:1")
        wrong = docker(client, "login", "-u", "pussh", "--password-stdin", proc.host_port, input="wrong\n")
        assert wrong.returncode != 0
        # `docker login` with any user and the token as password (Basic), then push and pull
        for host in (client, server):
            ok = docker(host, "login", "-u", "pussh", "--password-stdin", proc.host_port, input=token + "\n")
            assert ok.returncode == 0, ok.stderr
        assert docker(client, "push", ref).returncode == 0
        assert server.has_image("secured/app:1")
        pulled = docker(server, "pull", ref)
        assert pulled.returncode == 0, pulled.stderr
    finally:
        assert proc.stop() == 0


KILLED_CLIENT = textwrap.dedent("""
    import asyncio, sys, aiohttp
    async def main(url):
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v2/killed/app/blobs/uploads/") as r:
                loc = r.headers["Location"]
            print(r.headers["Docker-Upload-UUID"], loc, flush=True)
            async def body():
                while True:
                    yield b"k" * (1 << 20)
                    await asyncio.sleep(0.01)
            await s.patch(url + loc, data=body())
    asyncio.run(main(sys.argv[1]))
""")


async def _ingest_offset(sock: str, upload_id: str) -> int | None:
    async with Containerd(sock, "moby") as c:
        for st in await c.content.list_statuses():
            if upload_id in st.ref:
                return st.offset
    return None


async def _content(sock: str) -> set[str]:
    async with Containerd(sock, "moby") as c:
        return {i.digest for i in await c.content.list()}


def _upload_status(reg, loc: str) -> tuple[int, str | None, str | None]:
    """GET of an upload: (status, Range header, error code)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(reg.address + loc, timeout=30) as r:
            return r.status, r.headers.get("Range"), None
    except urllib.error.HTTPError as e:
        return e.code, None, json.loads(e.read() or b"{}").get("errors", [{}])[0].get("code")


async def _collect(sock: str) -> None:
    async with Containerd(sock, "moby") as c:
        await c.leases.collect_garbage()


def test_killed_client_leaves_an_upload_that_expires(server, tmp_path):
    reg = start_registry_process(tmp_path, ["--listen", "127.0.0.1:0", "--containerd", server.containerd_socket,
                                            "--upload-expiry", "3"])
    try:
        client = subprocess.Popen([PYTHON, "-c", KILLED_CLIENT, reg.address], stdout=subprocess.PIPE, text=True,
                                  cwd=REPO_ROOT)
        before = asyncio.run(_content(server.containerd_socket))
        upload_id, loc = client.stdout.readline().split()
        assert len(upload_id) == 32
        deadline = time.monotonic() + 30
        while (asyncio.run(_ingest_offset(server.containerd_socket, upload_id)) or 0) < (8 << 20):
            assert time.monotonic() < deadline, "the upload never got going"
            time.sleep(0.1)
        client.send_signal(signal.SIGKILL)
        client.wait()
        # The half-sent bytes stay an upload in progress (resumable, its Range at least what had
        # arrived), never a committed blob.
        status, rng, _ = _upload_status(reg, loc)
        assert status == 204 and rng is not None and int(rng.split("-")[1]) + 1 >= 8 << 20, (status, rng)
        assert asyncio.run(_content(server.containerd_socket)) == before, "the killed upload committed a blob"
        time.sleep(3.5)
        deadline = time.monotonic() + 30
        while asyncio.run(_ingest_offset(server.containerd_socket, upload_id)) is not None:
            assert time.monotonic() < deadline, "the ingest outlived its lease"
            asyncio.run(_collect(server.containerd_socket))
            time.sleep(0.2)
        # the upload is gone (its ingest expired), and the registry is none the worse for it
        assert _upload_status(reg, loc)[::2] == (404, "BLOB_UPLOAD_UNKNOWN")
        assert _upload_status(reg, "/v2/")[0] == 200  # (stdlib: a fresh Debian has no curl)
    finally:
        assert reg.stop() == 0
    assert "Traceback" not in reg.stderr(), reg.stderr()[-5000:]
