"""A local user in the docker group who may not open containerd's socket still gets a per-blob push:
pussh reads the image through a short-lived local helper container (registry image, socket mounted)."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import sysconfig

from pussh_support import REPO_ROOT, build_app_image, build_registry_image

pytestmark = pytest.mark.e2e
# The venv's interpreter may live under /root (pyenv), out of another user's reach: run the system's
# Python of the same version with the venv's packages on the path.
USER_PYTHON = f"/usr/bin/python3.{sysconfig.get_python_version().split('.')[1]}"


@pytest.fixture
def readable_checkout():
    """The checkout (and the venv in it) where another user can read it: a checkout in root's home,
    as a fresh Debian machine has it (/root is 0700), is out of that user's reach. A bind mount
    shows the same files under a path the user can walk."""
    d = tempfile.mkdtemp(prefix="pussh-src-")
    os.chmod(d, 0o755)
    subprocess.run(["mount", "--bind", str(REPO_ROOT), d], check=True)
    try:
        yield Path(d)
    finally:
        subprocess.run(["umount", d], check=False)
        os.rmdir(d)


@pytest.fixture
def docker_user():
    name = f"pl{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", "-G", "docker", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", "-r", "-f", name], check=False, capture_output=True)


def test_docker_group_user_without_containerd_access(docker_user, local_host, remote_host, readable_checkout):
    local, remote = local_host, remote_host
    purelib = Path(sysconfig.get_paths()["purelib"])
    if purelib.is_relative_to(REPO_ROOT):  # the venv's packages: through the mount too
        purelib = readable_checkout / purelib.relative_to(REPO_ROOT)
    user_path = f"{purelib}:{readable_checkout}"
    build_registry_image(local)
    build_app_image(local, "helper:1", [3, 2], seed="helper")
    home = f"/home/{docker_user}"
    # The user's own copy of the SSH material (the test bed's is root's).
    ssh_dir = os.path.join(home, ".pussh-test")
    os.makedirs(ssh_dir)
    for f in (remote.ssh_key, remote.known_hosts):
        shutil.copy(f, ssh_dir)
    cfg = open(remote.ssh_config).read()
    cfg = cfg.replace(remote.ssh_key, os.path.join(ssh_dir, "id_ed25519"))
    cfg = cfg.replace(remote.known_hosts, os.path.join(ssh_dir, "known_hosts"))
    open(os.path.join(ssh_dir, "config"), "w").write(cfg)
    subprocess.run(["chown", "-R", f"{docker_user}:{docker_user}", ssh_dir], check=True)
    os.chmod(os.path.join(ssh_dir, "id_ed25519"), 0o600)

    def as_user(*argv: str) -> subprocess.CompletedProcess:
        env = ["env", f"HOME={home}", f"PYTHONPATH={user_path}", f"DOCKER_HOST={local.docker_host}",
               f"CONTAINERD_ADDRESS={local.containerd_socket}", "CONTAINERD_NAMESPACE=moby"]
        return subprocess.run(["runuser", "-u", docker_user, "--", *env, *argv], capture_output=True, text=True,
                              cwd=str(readable_checkout), timeout=600)

    if not os.access(USER_PYTHON, os.X_OK):
        pytest.fail(f"{USER_PYTHON} is needed to run pussh as a non-root user")
    probe = as_user(USER_PYTHON, "-c", f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({local.containerd_socket!r})")
    assert probe.returncode != 0 and "Permission" in probe.stderr  # the point of this test
    r = as_user(USER_PYTHON, "-m", "pussh", "-v", "-F", os.path.join(ssh_dir, "config"),
                "--registry-image", "pussh-registry:test", "helper:1", remote.alias)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "helper container" in r.stderr
    assert remote.has_image("helper:1")
    assert remote.docker("image", "inspect", "-f", "{{.Id}}", "helper:1").stdout == \
        local.docker("image", "inspect", "-f", "{{.Id}}", "helper:1").stdout
    assert local.docker("ps", "-aq", "--filter", "label=pussh.helper=1").stdout.strip() == ""
    assert remote.docker("ps", "-aq", "--filter", "label=pussh.registry=1").stdout.strip() == ""
    # Without the registry image here (the server, root over SSH, is written directly and needs
    # none): the last resort, docker save, and its temporary copy is gone afterwards.
    build_app_image(local, "helper:2", [2], seed="helper2")
    r = as_user(USER_PYTHON, "-m", "pussh", "-v", "-F", os.path.join(ssh_dir, "config"),
                "--registry-image", "pussh-registry:remote-only", "helper:2", remote.alias)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "docker save" in r.stderr
    assert remote.docker("image", "inspect", "-f", "{{.Id}}", "helper:2").stdout == \
        local.docker("image", "inspect", "-f", "{{.Id}}", "helper:2").stdout
    assert not any(p.name.startswith("save-") for p in Path(home, ".cache", "pussh").glob("*"))
