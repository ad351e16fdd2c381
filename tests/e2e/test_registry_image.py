"""The registry's Docker image: built from the repository's Dockerfile on a base made with
debootstrap + `docker import` (nothing is pulled), run as pussh runs it (host network, the
containerd socket mounted, token on stdin), pushed into by a real docker, stopped gracefully."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from regsupport import REPO_ROOT, import_python_base
from testbed.local import LocalHost

pytestmark = pytest.mark.e2e
IMAGE = "pussh-registry:e2e"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(scope="module")
def server():
    with LocalHost("containerd") as h:
        yield h


@pytest.fixture(scope="module")
def client():
    with LocalHost("containerd") as h:
        yield h


@pytest.fixture(scope="module")
def image(server) -> str:
    base = import_python_base(server)
    args = ["build", "-q", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-t", IMAGE]
    if os.path.exists(CA_BUNDLE):  # a TLS-inspecting proxy between us and PyPI needs its CA
        args += ["--secret", f"id=pipcert,src={CA_BUNDLE}"]
    server.docker(*args, str(REPO_ROOT), timeout=1200)
    return IMAGE


def test_image_runs_as_documented_and_takes_a_push(server, client, image, tmp_path):
    cfg = json.loads(server.docker("image", "inspect", image).stdout)[0]["Config"]
    assert cfg["Entrypoint"] == ["/opt/pussh/bin/pussh-registry"]
    assert "PUSSH_REGISTRY_LISTEN=0.0.0.0:5000" in cfg["Env"]
    size = int(server.docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
    assert size < 400 << 20, f"the registry image grew to {size >> 20} MiB"

    token = "imgtok-" + os.urandom(6).hex()
    assert cfg["User"] == "65532:65532"  # not root: the socket's group is all it gets (--group-add)
    gid = str(os.stat(server.containerd_socket).st_gid)
    cid = server.docker("run", "-d", "--pull", "never", "--network", "host", "--env-file", "/dev/stdin",
                        "--group-add", gid, "-v", f"{server.containerd_socket}:/run/containerd/containerd.sock",
                        image, "--listen", "127.0.0.1:0", input=f"PUSSH_REGISTRY_TOKEN={token}\n").stdout.strip()
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            out = server.docker("logs", cid).stdout
            m = re.search(r"^pussh-registry listening on http://127\.0\.0\.1:(\d+)$", out, re.M)
            port = int(m.group(1)) if m else None
            time.sleep(0.2)
        assert port, server.docker("logs", cid).stdout + server.docker("logs", cid).stderr
        info = json.loads(server.docker("inspect", cid).stdout)[0]
        assert token not in json.dumps([info["Path"], info["Args"], info["Config"]["Cmd"]])  # never on argv

        ctx = tmp_path / "ctx"
        (ctx / "bin").mkdir(parents=True)
        (ctx / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
        (ctx / "bin" / "busybox").chmod(0o755)
        (ctx / "Dockerfile").write_text('FROM scratch\nCOPY bin/ /bin/\nCMD ["/bin/busybox", "echo", "from-image"]\n')
        ref = f"127.0.0.1:{port}/viaimage/app:1"
        client.docker("build", "-q", "--network", "none", "-t", ref, str(ctx))
        env = {**os.environ, **client.env, "DOCKER_CONFIG": str(tmp_path / "dockercfg")}
        login = subprocess.run(["docker", "login", "-u", "x", "--password-stdin", f"127.0.0.1:{port}"],
                               input=token, env=env, capture_output=True, text=True, timeout=120)
        assert login.returncode == 0, login.stderr
        push = subprocess.run(["docker", "push", ref], env=env, capture_output=True, text=True, timeout=300)
        assert push.returncode == 0, push.stderr
        out = server.docker("run", "--rm", "--pull", "never", "--network", "host", "viaimage/app:1").stdout
        assert out.strip() == "from-image"
    finally:
        server.docker("stop", "-t", "20", cid, check=False, timeout=60)
        state = json.loads(server.docker("inspect", cid).stdout)[0]["State"]
        logs = server.docker("logs", cid, check=False)
        server.docker("rm", "-f", cid, check=False)
    assert state["ExitCode"] == 0, logs.stdout + logs.stderr  # SIGTERM: a clean, graceful exit
    assert "Traceback" not in logs.stderr
