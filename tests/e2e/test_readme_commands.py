"""The registry commands the READMEs show, read from the Markdown itself (so the docs cannot drift) and
run as written on a test-bed Docker host: the "Standalone registry" block of README.md and the top
usage block of registry/README.md. Each ends in a `docker push` into the standalone registry, and the
pushed image must then run on the registry's host with `docker run --pull never`.

Only what is specific to this machine is substituted, each substitution asserted to apply (a doc edit
that moves a command away from what it expects fails here instead of going untested):
- DOCKER_HOST / CONTAINERD_ADDRESS: the test bed's daemons, not the machine's (`clean_env`);
- the host side of the containerd socket path (`-v HOST:CONTAINER`, `stat -c %g HOST`): the test
  bed's socket, root:root 0660 like a standard host's; the path inside the container stays;
- the port: a free one instead of 5000, which other things on this machine may hold;
- `-p 127.0.0.1:5000:5000`: the test bed's dockerd runs with "bridge": "none" (it must not touch the
  machine's network), so a container has no bridge to publish a port from. It becomes
  `--network host -e PUSSH_REGISTRY_LISTEN=127.0.0.1:PORT`: the same registry reached at the same
  loopback address, the one difference being the network namespace it listens in;
- `docker build`: nothing can be pulled here, so `--build-arg BASE_IMAGE=` names the debootstrap
  Python base the other image tests use, and behind this machine's TLS-inspecting proxy pip gets the
  CA bundle as the build secret the README and Dockerfile describe.
The client side (`docker tag`, `login`, `push`) runs against a second Docker host on the same machine
(so `localhost:PORT` is the same registry): `myapp:1` exists only there, and can reach the registry's
host only through the registry.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pussh_support import REPO_ROOT, build_app_image
from testbed import build_python_base
from testbed.images import HOST_CA
from testbed.local import clean_env

pytestmark = pytest.mark.e2e
SOCK = "/run/containerd/containerd.sock"  # the documented (standard host's) socket path
VENV_BIN = str(REPO_ROOT / ".venv" / "bin")
IMAGE = "pussh-registry"  # as the READMEs tag it
APP = "myapp:1"


# -- reading the Markdown ---------------------------------------------------------------------------

def _section(text: str, heading: str | None) -> str:
    """The text under `## heading` up to the next `## `, or (heading None) the text before the first `## `."""
    if heading is None:
        return re.split(r"^## ", text, maxsplit=1, flags=re.M)[0]
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"no '## {heading}' section"
    return m.group(1)


def _strip_comment(line: str) -> str:
    """Drop a shell comment (a `#` at the start of a word, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(path: Path, heading: str | None) -> list[str]:
    """The commands of the first ```sh block of a section: comments dropped, continuations joined."""
    m = re.search(r"^```sh\n(.*?)^```", _section(path.read_text(), heading), re.M | re.S)
    assert m, f"{path.name}: no ```sh block in {heading or 'the top section'}"
    cmds, cur = [], ""
    for raw in m.group(1).splitlines():
        line = _strip_comment(raw)
        if line.endswith("\\"):
            cur += line[:-1].strip() + " "
            continue
        cur += line.strip()
        if cur.strip():
            cmds.append(cur.strip())
        cur = ""
    assert not cur, f"{path.name}: the block ends in a continuation"
    return cmds


def test_the_blocks_are_read_as_expected():
    """The parser itself, on the real files (no daemons): what the e2e test below will run."""
    top = shell_commands(REPO_ROOT / "README.md", "Standalone registry")
    assert [c.split()[:2] for c in top] == [["docker", "build"], ["docker", "run"], ["docker", "tag"],
                                            ["docker", "push"]], top
    assert all("#" not in c for c in top)
    reg = shell_commands(REPO_ROOT / "registry" / "README.md", None)
    assert reg[0].startswith("pussh-registry --listen ") and "docker push" in reg[-1], reg


# -- substituting what is host-specific -------------------------------------------------------------

def _sub(pattern: str, repl: str, cmd: str, what: str) -> str:
    out, n = re.subn(pattern, repl, cmd)
    assert n, f"expected {what} in the documented command: {cmd}"
    return out


def on_testbed(cmd: str, server, port: int, base: str) -> str:
    """The documented command with only this machine's specifics put in (see the module docstring)."""
    if SOCK in cmd:  # the host side only: not the container's path after `-v HOST:`
        cmd = re.sub(rf"(?<!:){re.escape(SOCK)}", server.containerd_socket, cmd)
    if re.match(r"(.*\|\s*)?docker run ", cmd):
        cmd = _sub(r"-p (127\.0\.0\.1:)?5000:5000", f"--network host -e PUSSH_REGISTRY_LISTEN=127.0.0.1:{port}",
                   cmd, "-p 5000:5000")
    if cmd.startswith("docker build "):
        extra = f"--build-arg BASE_IMAGE={base}"
        if os.path.exists(HOST_CA):
            extra += f" --secret id=pipcert,src={HOST_CA}"
        cmd = _sub(r"^docker build ", f"docker build {extra} ", cmd, "docker build")
    cmd = re.sub(r"\b(localhost|127\.0\.0\.1):5000\b", rf"\g<1>:{port}", cmd)
    assert "5000" not in cmd, cmd
    return cmd


def is_client_side(cmd: str) -> bool:
    return re.search(r"(^|\|\s*)docker (tag|login|push) ", cmd) is not None


# -- running ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        with opener.open(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class Bed:
    """Runs documented commands one by one in bash, on the server's or the client's docker, keeping
    shell variables (`TOKEN=$(...)`) from one to the next, and the containers `docker run -d` made."""

    def __init__(self, server, client, port: int, base: str, tmp: Path) -> None:
        self.server, self.client, self.port, self.base = server, client, port, base
        self.vars: dict[str, str] = {}
        self.containers: list[str] = []
        self.extra = {"DOCKER_CONFIG": str(tmp / "docker-config"),  # `docker login` writes here, not ~/.docker
                      "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def env(self, host) -> dict[str, str]:
        return clean_env(**host.env, **self.extra, **self.vars)

    def run(self, documented: str, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = on_testbed(documented, self.server, self.port, self.base)
        host = self.client if is_client_side(cmd) else self.server
        m = re.fullmatch(r"([A-Za-z_]\w*)=(\$\(.*\)|\S+)", cmd)  # NAME=$(...): kept for what follows
        script = f'{m.group(1)}={m.group(2)}; printf %s "${m.group(1)}"' if m else cmd
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO_ROOT, env=self.env(host),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, f"`{documented}`\n  ran as `{cmd}`: exit {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}"
        if m:
            self.vars[m.group(1)] = p.stdout
        elif re.search(r"docker run -d ", cmd):
            cid = p.stdout.strip().splitlines()[-1]
            assert re.fullmatch(r"[0-9a-f]{64}", cid), p.stdout
            self.containers.append(cid)
            self.wait_listening(cid)
        return p

    def wait_listening(self, cid: str) -> None:
        """`docker run -d` returns before the registry listens; a person typing the next command would
        not notice, a script does: wait for its ready line (fail at once if it exited)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = self.server.docker("logs", cid, check=False)
            if re.search(rf"^pussh-registry listening on http://127\.0\.0\.1:{self.port}$", logs.stdout, re.M):
                return
            state = json.loads(self.server.docker("inspect", cid).stdout)[0]["State"]
            assert state["Running"], f"the registry exited ({state['ExitCode']}):\n{logs.stdout}{logs.stderr}"
            time.sleep(0.1)
        pytest.fail(f"the registry container did not come up in 60 s:\n{logs.stdout}{logs.stderr}")

    def stop_containers(self) -> None:
        """docker stop (SIGTERM): the registry exits 0; then rm. Returns after all are gone."""
        for cid in self.containers:
            self.server.docker("stop", "-t", "20", cid, check=False, timeout=60)
            code = self.server.docker("inspect", "-f", "{{.State.ExitCode}}", cid, check=False).stdout.strip()
            logs = self.server.docker("logs", cid, check=False)
            self.server.docker("rm", "-f", cid, check=False)
            assert code == "0", f"the registry did not stop cleanly ({code}):\n{logs.stderr}"
        self.containers.clear()


def run_foreground_registry(bed: Bed, documented: str) -> None:
    """`pussh-registry --listen ...` runs until stopped: start it, check it serves, SIGTERM it."""
    cmd = on_testbed(documented, bed.server, bed.port, bed.base)
    proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=REPO_ROOT, env=bed.env(bed.server),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert line == f"pussh-registry listening on http://127.0.0.1:{bed.port}", (line, proc.poll())
        assert http_status(f"http://127.0.0.1:{bed.port}/v2/") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        err = proc.stderr.read()  # type: ignore[union-attr]
    assert rc == 0, err


# -- the test ---------------------------------------------------------------------------------------

@pytest.fixture
def bed(local_host, make_local, tmp_path):
    client = make_local()
    bed = Bed(local_host, client, free_port(), build_python_base(local_host), tmp_path)
    build_app_image(client, APP, [2], seed="readme-" + os.urandom(4).hex())
    try:
        yield bed
    finally:
        for cid in bed.containers:
            local_host.docker("rm", "-f", cid, check=False)
        local_host.docker("rmi", APP, IMAGE, check=False)


def check_pushed_image_runs(bed: Bed, expected: str) -> None:
    out = bed.server.docker("run", "--rm", "--pull", "never", "--network", "none", APP).stdout
    assert out.strip() == expected  # md5 of the image's data: the same content as on the client


def test_readme_standalone_registry_commands(bed):
    expected = bed.client.docker("run", "--rm", "--pull", "never", "--network", "none", APP).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}\s+-", expected), expected
    assert not bed.server.has_image(APP)
    st = os.stat(bed.server.containerd_socket)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o660)  # as on a standard host

    build, run, *rest = shell_commands(REPO_ROOT / "README.md", "Standalone registry")
    bed.run(build, timeout=900)

    # the command as the README showed it before (no --group-add): the image's own error says what to add
    no_group = on_testbed(re.sub(r'--group-add "\$\(stat -c %g [^)]*\)" ', "", run), bed.server, bed.port, bed.base)
    assert "--group-add" not in no_group
    cid = subprocess.run(["bash", "-c", no_group], env=bed.env(bed.server), capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    try:
        code = bed.server.docker("wait", cid, timeout=60).stdout.strip()
        logs = bed.server.docker("logs", cid).stderr
    finally:
        bed.server.docker("rm", "-f", cid, check=False)
    assert code == "1", logs
    assert "permission denied on the containerd socket" in logs, logs
    assert '--group-add "$(stat -c %g /run/containerd/containerd.sock)"' in logs and "--user 0" in logs, logs
    assert "Traceback" not in logs, logs

    bed.run(run)
    for cmd in rest:
        bed.run(cmd, timeout=300)
    check_pushed_image_runs(bed, expected)
    bed.stop_containers()


def test_registry_readme_usage_commands(bed):
    expected = bed.client.docker("run", "--rm", "--pull", "never", "--network", "none", APP).stdout.strip()
    assert not bed.server.has_image(APP)
    foreground, *rest = shell_commands(REPO_ROOT / "registry" / "README.md", None)
    run_foreground_registry(bed, foreground)
    for cmd in rest:
        bed.run(cmd, timeout=900 if cmd.startswith("docker build") else 300)
        if re.search(r"docker run -d ", cmd) and "PUSSH_REGISTRY_TOKEN" in cmd:
            assert http_status(f"http://127.0.0.1:{bed.port}/v2/") == 401  # the token is required
    check_pushed_image_runs(bed, expected)
    bed.stop_containers()
