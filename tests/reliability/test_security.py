"""pussh must not open the server to others: the registry it starts listens on the server's loopback
only, answers nothing without the per-push token (not to another local user, not from another
interface), runs unprivileged, and its token is nowhere another user can read it. The host key is
checked by default and a changed key stops the push before anything happens on the server. Image
names reach the server as data, never as shell: references with every character the grammar allows
push fine, and strings with shell metacharacters are refused locally."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pussh_support import PYTHON, REGISTRY_IMAGE, REPO_ROOT
from relhosts import check_whole, env_for, full_name, push, registry_containers, run_output, start_push
from relsupport import wait_until
from testbed import build_test_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Run on the server's loopback as another (non-root, non-docker) user: try the registry without the
# token and with wrong ones, and look for the token (given on stdin) wherever this user can read.
INTRUDER = r"""
import http.client, os, sys, base64
port, token = int(sys.argv[1]), sys.stdin.read().strip()
def status(method, path, auth=None, body=b""):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, body=body, headers={"Authorization": auth} if auth else {})
    r = c.getresponse(); r.read(); return r.status
out = {
    "none": status("GET", "/v2/"),
    "wrong-bearer": status("GET", "/v2/", "Bearer " + "x" * len(token)),
    "token-prefix": status("GET", "/v2/", "Bearer " + token[:-1]),
    "wrong-basic": status("GET", "/v2/", "Basic " + base64.b64encode(b"root:guess").decode()),
    "start-upload": status("POST", "/v2/evil/blobs/uploads/"),
    "put-manifest": status("PUT", "/v2/evil/manifests/1", body=b"{}"),
    "catalog": status("GET", "/v2/_catalog"),
}
found = []
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    for f in ("cmdline", "environ"):
        try:
            if token.encode() in open(f"/proc/{pid}/{f}", "rb").read():
                found.append(f"{pid}/{f}")
        except OSError:
            pass
out["token-readable-at"] = found
print(json_out := __import__("json").dumps(out))
"""


def registry_port(remote, cid: str) -> int:
    def port():
        m = re.search(r"pussh-registry listening on http://127\.0\.0\.1:(\d+)", remote.docker("logs", cid).stdout)
        return int(m.group(1)) if m else None
    return wait_until(port, 60, "the registry's listening line")


def test_registry_loopback_only_token_required_unprivileged(rel_env):
    local, remote = rel_env
    intruder = remote.add_user("intruder")  # no docker group, no sudo
    image = build_test_image(local, "sec/slow:1", [24], seed="sec-slow", text_mb=0.25)
    remote.shape(rate="10mbit")  # ~20 s of upload: the registry is up while we knock
    try:
        p = start_push(local, remote, image, "--via", "registry")  # the registry path is what is attacked
        cid = wait_until(lambda: registry_containers(remote), 120, "the registry container")[0]
        port = registry_port(remote, cid)
        inspect = json.loads(remote.docker("inspect", cid).stdout)[0]
        token = next(e.split("=", 1)[1] for e in inspect["Config"]["Env"] if e.startswith("PUSSH_REGISTRY_TOKEN="))
        pid = inspect["State"]["Pid"]

        # It listens on the server's 127.0.0.1 and nowhere else.
        listening = remote.run("ss", "-Hltn", f"sport = :{port}").stdout.split()
        assert [a for a in listening if a.endswith(f":{port}")] == [f"127.0.0.1:{port}"], listening
        # Another interface: the server's address on the link, from this machine.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((remote.address, port), timeout=10).close()
        # Another local user on the server: every request refused, the token nowhere to be read.
        res = remote.run("runuser", "-u", intruder.name, "--", "python3", "-c", INTRUDER, str(port), input=token)
        seen = json.loads(res.stdout)
        assert seen.pop("token-readable-at") == [], seen
        assert set(seen.values()) == {401}, seen
        assert remote.run("runuser", "-u", intruder.name, "--", "docker", "-H", f"unix://{remote.docker_socket}",
                          "inspect", cid, check=False).returncode != 0  # nor through Docker
        # With the token (root reads it through Docker), the same port answers: the 401s were auth.
        ok = remote.run("python3", "-c", "import http.client,sys; c=http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]));"
                        "c.request('GET','/v2/',headers={'Authorization':'Bearer '+sys.stdin.read().strip()});"
                        "print(c.getresponse().status)", str(port), input=token).stdout.strip()
        assert ok == "200"
        # The token is on no command line, the registry runs unprivileged.
        assert token not in json.dumps([inspect["Path"], inspect["Args"], inspect["Config"]["Cmd"]])
        uid = re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1)
        assert uid == "65532", uid
        assert p.wait(timeout=600).rc == 0, (p.out, p.err)
    finally:
        remote.unshape()
    assert registry_containers(remote) == []


def _config(tmp_path: Path, remote, known_hosts: str) -> str:
    """An ssh config as a user would write it: no StrictHostKeyChecking, so the default applies."""
    cfg = tmp_path / f"ssh_config_{time.monotonic_ns()}"
    cfg.write_text(f"Host target\n  HostName {remote.address}\n  User root\n  IdentityFile {remote.ssh_key}\n"
                   f"  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
                   f"  HostKeyAlias {remote.alias}\n")
    return str(cfg)


def _pussh(local, cfg: str, image: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "pussh", "-q", "-F", cfg, "--registry-image", REGISTRY_IMAGE, image, "target"],
                          capture_output=True, text=True, env=env_for(local), cwd=str(REPO_ROOT), timeout=600)


def test_host_key_checked_by_default_and_a_changed_key_stops_the_push(rel_env, tmp_path):
    local, remote = rel_env
    image = build_test_image(local, "sec/hostkey:1", [1], seed="sec-hostkey", text_mb=0.1)
    # An unknown host is not trusted on first use.
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    r = _pussh(local, _config(tmp_path, remote, str(empty)), image)
    assert r.returncode == 1 and "host key not known" in r.stderr, r.stderr
    assert empty.read_text() == ""  # and not recorded either
    # The server's host key changes (reinstalled, or someone in the middle).
    key = Path(remote.host_key_pub[:-4])
    saved = tmp_path / "saved_host_key"
    shutil.copy(key, saved)
    shutil.copy(remote.host_key_pub, str(saved) + ".pub")
    known = tmp_path / "known_hosts"
    shutil.copy(remote.known_hosts, known)
    before = known.read_text()
    try:
        key.unlink()
        Path(remote.host_key_pub).unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        _reload_sshd(remote)
        r = _pussh(local, _config(tmp_path, remote, str(known)), image)
        assert r.returncode == 1 and "host key has CHANGED" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert known.read_text() == before
    finally:
        shutil.copy(saved, key)
        shutil.copy(str(saved) + ".pub", remote.host_key_pub)
        _reload_sshd(remote)
    # Nothing happened on the server.
    assert registry_containers(remote) == []
    assert not remote.has_image(image)
    # With the right key back, the same command works.
    r = _pussh(local, _config(tmp_path, remote, str(known)), image)
    assert r.returncode == 0, r.stderr
    assert remote.has_image(image)


def _reload_sshd(remote) -> None:
    """sshd loads its host keys when it starts: SIGHUP (it re-executes itself), then wait until it
    serves the key now on disk."""
    import os
    import signal
    want = Path(remote.host_key_pub).read_text().split()[1]
    os.kill(remote._daemon("sshd").pid, signal.SIGHUP)

    def serves() -> bool:
        scan = subprocess.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", remote.address], capture_output=True, text=True)
        return want in scan.stdout
    wait_until(serves, 60, "sshd serving the new host key", interval=0.3)


# Valid references, using every separator the grammar allows (and a registry host with a port);
# built from the same image, pushed as is, found on the server under exactly that name.
VALID_NAMES = ["sec/a-b--c__d.e_f:T_a.g-1", "sec/x.y/z-9:1.0-rc_1", "localhost:5000/sec/app:v1", "[::1]:5000/sec/app:v6",
               "registry.example.com:8443/sec/deep/path/app:latest", "sec/" + "a" * 60 + ":" + "t" * 128]
# Shell metacharacters, option-looking and other invalid strings: refused before any connection.
INVALID_NAMES = ["sec/app:$(touch${IFS}/tmp/pussh-pwned)", "sec/app;touch /tmp/pussh-pwned:1", "sec/app:1 && id",
                 "`id`:1", "sec/app:1|id", "sec/app:1\nid", "-sec:1", "--sec:1", "sec/app:-1", "sec/app:'1'",
                 'sec/app:"1"', "sec/app:1>x", "sec/app:*", "sec/app:1#x", "sec/App:1", "sec/app:ä", "../sec:1",
                 "sec/app:" + "t" * 129, "sec//app:1", "sec/app@sha256:bad"]


def test_names_with_every_valid_character_push_as_data(rel_env):
    local, remote = rel_env
    base = build_test_image(local, "sec/base:1", [1], seed="sec-names", text_mb=0.1)
    want = run_output(local, base)
    for name in VALID_NAMES:
        local.docker("tag", base, name)
        res = push(local, remote, name)
        check_whole(remote, name, {res["digest"]: want})
        assert remote.docker("image", "inspect", name, check=False).returncode == 0, name
        print(f"pushed {name} -> {full_name(name)}")


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_refused_locally(rel_env, name):
    local, remote = rel_env
    marker = Path("/tmp/pussh-pwned")  # /tmp is shared with the remote (see testbed)
    marker.unlink(missing_ok=True)
    r = subprocess.run([PYTHON, "-m", "pussh", "-q", "-F", remote.ssh_config, "--registry-image", REGISTRY_IMAGE,
                        name, remote.alias], capture_output=True, text=True, env=env_for(local), cwd=str(REPO_ROOT),
                       timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.strip(), r.stderr
    assert not marker.exists()
    assert registry_containers(remote) == []
