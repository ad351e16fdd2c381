"""The commands users ask for, end to end on the real test bed: several images in one run (one SSH
connection per host, a shared blob crosses once), `pussh compose`, `--dry-run` (the veth shows no
layer bytes; no lease, container, content or image left on the server), `pussh install-docker-plugin`
and each one's bad inputs (one line, non-zero exit, nothing changed on either side)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from pussh_support import PYTHON, REPO_ROOT, build_app_image, pussh
from test_pussh_push import layer_digests, no_registry_left, run_output

pytestmark = pytest.mark.e2e
MiB = 1 << 20


@pytest.fixture(scope="module")
def local(local_host):
    build_app_image(local_host, "cmds:a", [4, 3], seed="cmds", last_seed="a")
    build_app_image(local_host, "cmds:b", [4, 3], seed="cmds", last_seed="b")
    return local_host


def results_of(r) -> list[dict]:
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def one_line_error(r, code: int, *fragments: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def sent_on_wire(remote, fn):
    tx0, _ = remote.link_bytes()
    out = fn()
    return remote.link_bytes()[0] - tx0, out


@contextlib.contextmanager
def ssh_connections(remote):
    """Counts the TCP connections opened to the server's sshd (a SYN counter in its netns)."""
    rule = ["INPUT", "-p", "tcp", "--dport", "22", "--syn", "-m", "comment", "--comment", "pussh-cmds-syn", "-j", "ACCEPT"]
    remote.run("iptables", "-w", "-I", *rule)
    counter = {"n": 0}
    try:
        yield counter
        out = remote.run("iptables", "-w", "-L", "INPUT", "-v", "-n", "-x").stdout
        counter["n"] = sum(int(line.split()[0]) for line in out.splitlines() if "pussh-cmds-syn" in line)
    finally:
        remote.run("iptables", "-w", "-D", *rule, check=False)


def server_state(remote) -> dict:
    """What a dry run must not change: leases, content, images, containers."""
    return {
        "leases": sorted(remote.run("ctr", "-n", "moby", "leases", "ls", "-q").stdout.split()),
        "content": sorted(remote.run("ctr", "-n", "moby", "content", "ls", "-q").stdout.split()),
        "images": sorted(remote.run("ctr", "-n", "moby", "images", "ls", "-q").stdout.split()),
        "containers": sorted(remote.docker("ps", "-aq", "--no-trunc").stdout.split()),
        "docker_images": sorted(remote.docker("images", "-aq", "--no-trunc").stdout.split()),
    }


# -- several images, one connection per host ---------------------------------------------------------

def test_several_images_one_connection_shared_blobs_once(local, remote_host):
    remote = remote_host
    a, b = layer_digests(local, "cmds:a"), layer_digests(local, "cmds:b")
    shared = set(a) & set(b)
    assert len(shared) == 2 and len(set(b) - set(a)) == 1  # busybox + the 4 MiB layer; the 3 MiB one differs
    union = sum(a.values()) + sum(v for d, v in b.items() if d not in a)
    with ssh_connections(remote) as conns:
        wire, r = sent_on_wire(remote, lambda: pussh(local, "--json", "-F", remote.ssh_config, "cmds:a", "cmds:b",
                                                     "--to", remote.alias))
    assert r.returncode == 0, r.stdout + r.stderr
    res = results_of(r)
    assert [x["image"] for x in res] == ["cmds:a", "cmds:b"] and all(x["ok"] for x in res), res
    assert conns["n"] == 1, f"{conns['n']} SSH connections for one host"
    # Each shared blob crossed once: the second image found them on the server.
    assert set(a) <= set(res[0]["sent"]) and not set(res[1]["sent"]) & shared
    assert union <= wire < union * 1.1 + MiB, (wire, union, sum(a.values()) + sum(b.values()))
    assert run_output(remote, "cmds:a") == run_output(local, "cmds:a")
    assert run_output(remote, "cmds:b") == run_output(local, "cmds:b")

    # Today's form still works: one image, then hosts; nothing to send this time.
    r = pussh(local, "--json", "-F", remote.ssh_config, "cmds:b", remote.alias)
    assert r.returncode == 0 and results_of(r)[0]["blobs_sent"] == 0, r.stdout + r.stderr


def test_several_images_bad_input_sends_nothing(local, remote_host):
    remote = remote_host
    build_app_image(local, "cmds:fresh", [1], seed="cmdsfresh")
    wire, r = sent_on_wire(remote, lambda: pussh(local, "-F", remote.ssh_config, "cmds:fresh", "cmds:nosuch",
                                                 "--to", remote.alias))
    one_line_error(r, 1, "no such local image: cmds:nosuch")
    assert wire < 300_000, wire  # the SSH handshake at most: no blob
    assert not remote.has_image("cmds:fresh")
    one_line_error(pussh(local, "--to", remote.alias), 2, "Missing argument 'IMAGE'")
    one_line_error(pussh(local, "cmds:fresh", "cmds:fresh", "--to", remote.alias), 2, "given twice")
    one_line_error(pussh(local, "cmds:fresh", "--to", remote.alias, "--to", remote.alias), 2, "given twice")


# -- --dry-run --------------------------------------------------------------------------------------

def test_dry_run_sends_and_changes_nothing_then_matches_the_push(local, remote_host):
    remote = remote_host
    build_app_image(local, "cmds:dry", [6, 4], seed="cmdsdry")
    layers = layer_digests(local, "cmds:dry")
    before = server_state(remote)
    wire, r = sent_on_wire(remote, lambda: pussh(local, "--json", "--dry-run", "-F", remote.ssh_config, "cmds:dry",
                                                 remote.alias))
    assert r.returncode == 0, r.stdout + r.stderr
    (dry,) = results_of(r)
    assert dry["dry_run"] is True and dry["via"] == "containerd" and dry["ok"]
    # every layer, the config (and buildx's attestation blobs)
    assert set(layers) <= set(dry["sent"]) and dry["blobs_sent"] == len(dry["sent"]) > len(layers)
    assert dry["bytes_sent"] >= sum(layers.values())
    assert wire < 300_000, f"a dry run sent {wire} bytes"
    assert server_state(remote) == before  # no lease, no content, no image, no container
    assert not remote.has_image("cmds:dry")

    # The text form names each blob and the path.
    r = pussh(local, "--dry-run", "-F", remote.ssh_config, "cmds:dry", remote.alias)
    assert r.returncode == 0, r.stderr
    for d in layers:
        assert f"would send {d}" in r.stderr and "via containerd" in r.stderr
    assert "dry run: cmds:dry" in r.stdout and f"would send {dry['blobs_sent']} blobs" in r.stdout and "nothing sent" in r.stdout

    # The registry path's dry run starts no container (and sends no registry image).
    since = remote.run("date", "+%s.%N").stdout.strip()
    wire, r = sent_on_wire(remote, lambda: pussh(local, "--json", "--dry-run", "--via", "registry", "-F",
                                                 remote.ssh_config, "cmds:dry", remote.alias))
    assert r.returncode == 0, r.stdout + r.stderr
    (reg,) = results_of(r)
    assert reg["via"] == "registry" and reg["dry_run"] and set(layers) <= set(reg["sent"])
    assert wire < 300_000, wire
    events = remote.docker("events", "--since", since, "--until", remote.run("date", "+%s.%N").stdout.strip(),
                           "--filter", "type=container", "--format", "{{.Action}}").stdout.split()
    assert "create" not in events, events
    assert server_state(remote) == before

    # The real push sends what the dry run said; a dry run afterwards has nothing to send.
    r = pussh(local, "--json", "-F", remote.ssh_config, "cmds:dry", remote.alias)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(results_of(r)[0]["sent"]) == sorted(dry["sent"])
    r = pussh(local, "--json", "-n", "-F", remote.ssh_config, "cmds:dry", remote.alias)
    assert r.returncode == 0 and results_of(r)[0]["blobs_sent"] == 0, r.stdout + r.stderr
    no_registry_left(remote)


def test_dry_run_bad_input(local, remote_host):
    remote = remote_host
    before = server_state(remote)
    one_line_error(pussh(local, "-n", "-F", remote.ssh_config, "cmds:nosuch", remote.alias), 1, "no such local image")
    r = pussh(local, "-n", "-F", remote.ssh_config, "--via", "load", "cmds:a", remote.alias)
    one_line_error(r, 2, "--via load")
    assert server_state(remote) == before


# -- compose ----------------------------------------------------------------------------------------

COMPOSE = """\
services:
  web:
    build: ./web
  api:
    build: .
    image: cmdsapi:${API_TAG:-7}
  cache:
    image: cmds:a
  debug:
    build: .
    profiles: [debug]
"""


def run_in(cwd: Path, local, *args: str):
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "CONTAINERD_ADDRESS", "SSH_AUTH_SOCK",
                                                             "COMPOSE_FILE", "COMPOSE_PROJECT_NAME")}
    env.update(local.env)
    return subprocess.run([PYTHON, "-m", "pussh", *args], cwd=str(cwd), env={**env, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=300)


def test_compose_pushes_every_service_as_compose_names_it(local, remote_host, tmp_path):
    remote = remote_host
    project = tmp_path / "Cmds_Proj.1"  # compose's project name: cmds_proj1
    project.mkdir()
    (project / "compose.yaml").write_text(COMPOSE)
    build_app_image(local, "cmds_proj1-web", [1], seed="cmdsweb")
    build_app_image(local, "cmdsapi:7", [1], seed="cmdsapi")
    r = run_in(project, local, "compose", "--json", "-F", remote.ssh_config, remote.alias)
    assert r.returncode == 0, r.stdout + r.stderr
    res = {x["image"]: x for x in results_of(r)}
    assert set(res) == {"cmds_proj1-web:latest", "cmdsapi:7", "cmds:a"}, res  # the debug profile is off
    assert all(x["ok"] for x in res.values())
    assert run_output(remote, "cmds_proj1-web") == run_output(local, "cmds_proj1-web")
    assert run_output(remote, "cmdsapi:7") == run_output(local, "cmdsapi:7")

    # -p and a variable rename the images; -s picks one service; a dry run sends nothing.
    build_app_image(local, "other-web", [1], seed="cmdsother")
    wire, r = sent_on_wire(remote, lambda: pussh(local, "compose", "-f", str(project / "compose.yaml"), "-p", "other",
                                                 "-s", "web", "--dry-run", "--json", "-F", remote.ssh_config,
                                                 remote.alias))
    assert r.returncode == 0, r.stdout + r.stderr
    (dry,) = results_of(r)
    assert dry["image"] == "other-web:latest" and dry["dry_run"] and dry["blobs_sent"] >= 2
    assert wire < 300_000 and not remote.has_image("other-web")


def test_compose_bad_input_sends_nothing(local, remote_host, tmp_path):
    remote = remote_host
    build_app_image(local, "cmds-compose-fresh:1", [1], seed="cmdscf")
    proj = tmp_path / "proj"
    proj.mkdir()
    compose = proj / "compose.yaml"
    compose.write_text("services:\n  fresh:\n    image: cmds-compose-fresh:1\n  ghost:\n    build: .\n")
    wire, r = sent_on_wire(remote, lambda: pussh(local, "compose", "-f", str(compose), "-F", remote.ssh_config,
                                                 remote.alias))
    line = one_line_error(r, 1, "service ghost", "proj-ghost", "not built locally")
    assert "docker compose build ghost" in line
    assert wire < 300_000 and not remote.has_image("cmds-compose-fresh:1")

    empty = tmp_path / "empty"  # no compose file here nor in a parent
    empty.mkdir()
    one_line_error(run_in(empty, local, "compose", "-F", remote.ssh_config, remote.alias), 2, "no compose file")
    one_line_error(pussh(local, "compose", "-f", str(tmp_path / "nope.yaml"), remote.alias), 2, "no compose file")
    (tmp_path / "bad.yaml").write_text("services: [\n")
    one_line_error(pussh(local, "compose", "-f", str(tmp_path / "bad.yaml"), remote.alias), 2, "not valid YAML")
    one_line_error(pussh(local, "compose", "-f", str(compose), "-s", "nope", remote.alias), 2, "no such service: nope")
    one_line_error(pussh(local, "compose", "-f", str(compose), "-p", "Bad Name", remote.alias), 2,
                   "invalid project name")
    one_line_error(pussh(local, "compose", "-f", str(compose)), 2, "Missing argument")
    assert not remote.has_image("cmds-compose-fresh:1")


# -- the Docker CLI plugin ----------------------------------------------------------------------------

def test_install_docker_plugin(local, tmp_path):
    cfg = tmp_path / "docker"
    r = pussh(local, "install-docker-plugin", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    link = cfg / "cli-plugins" / "docker-pussh"
    assert link.is_symlink() and Path(os.readlink(link)).name == "docker-pussh" and os.access(link, os.X_OK)
    p = subprocess.run(["docker", "--config", str(cfg), "pussh", "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "pussh, version" in p.stdout, p.stderr
    p = subprocess.run(["docker", "--config", str(cfg), "pussh", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "compose" in p.stdout, p.stderr
    again = pussh(local, "install-docker-plugin", "--config", str(cfg))
    assert again.returncode == 0 and "already" in again.stdout

    # Bad input: a file that is not a link stays unless --force; cli-plugins that is a file.
    link.unlink()
    link.write_text("mine")
    one_line_error(pussh(local, "install-docker-plugin", "--config", str(cfg)), 1, "not a link", "--force")
    assert link.read_text() == "mine"
    assert pussh(local, "install-docker-plugin", "--config", str(cfg), "--force").returncode == 0 and link.is_symlink()
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "cli-plugins").write_text("")
    one_line_error(pussh(local, "install-docker-plugin", "--config", str(tmp_path / "flat")), 1, "cannot link")
    assert (tmp_path / "flat" / "cli-plugins").is_file()


# -- pull -------------------------------------------------------------------------------------------

def received_on_wire(remote, fn):
    _, rx0 = remote.link_bytes()
    out = fn()
    return remote.link_bytes()[1] - rx0, out


def test_pull_brings_only_the_missing_blobs(local, remote_host):
    remote = remote_host
    build_app_image(local, "cmds:pa", [5, 1], seed="cmdspull", last_seed="a")
    build_app_image(local, "cmds:pb", [5, 1], seed="cmdspull", last_seed="b")
    want = run_output(local, "cmds:pb")
    pa, pb = layer_digests(local, "cmds:pa"), layer_digests(local, "cmds:pb")
    shared = {d: s for d, s in pb.items() if d in pa}
    r = pussh(local, "-q", "-F", remote.ssh_config, "cmds:pb", remote.alias)
    assert r.returncode == 0, r.stderr
    local.docker("rmi", "cmds:pb")
    assert not local.has_image("cmds:pb")

    # A dry run says what would come and changes nothing here.
    wire, r = received_on_wire(remote, lambda: pussh(local, "pull", "--json", "-n", "-F", remote.ssh_config,
                                                     remote.alias, "cmds:pb"))
    assert r.returncode == 0, r.stdout + r.stderr
    (dry,) = results_of(r)
    assert dry["dry_run"] and not set(dry["sent"]) & set(shared) and wire < 300_000
    assert not local.has_image("cmds:pb")

    wire, r = received_on_wire(remote, lambda: pussh(local, "pull", "--json", "-F", remote.ssh_config,
                                                     remote.alias, "cmds:pb"))
    assert r.returncode == 0, r.stdout + r.stderr
    (res,) = results_of(r)
    assert res["ok"] and res["via"] == "containerd" and not set(res["sent"]) & set(shared)
    assert wire < sum(shared.values()) * 0.5, (wire, shared)  # the shared 5 MiB layer did not cross
    assert run_output(local, "cmds:pb") == want
    assert local.diff_ids("cmds:pb") == remote.diff_ids("cmds:pb")
    again, r = received_on_wire(remote, lambda: pussh(local, "pull", "--json", "-F", remote.ssh_config,
                                                      remote.alias, "cmds:pb"))
    assert r.returncode == 0 and results_of(r)[0]["blobs_sent"] == 0 and again < 300_000, r.stdout + r.stderr
    text = pussh(local, "pull", "-F", remote.ssh_config, remote.alias, "cmds:pb")
    assert text.returncode == 0 and ": pulled cmds:pb" in text.stdout, text.stdout + text.stderr

    # Bad input: one line, non-zero, nothing made here.
    one_line_error(pussh(local, "pull", "-F", remote.ssh_config, remote.alias, "cmds:nosuch"), 1,
                   "no image cmds:nosuch on the server")
    assert not local.has_image("cmds:nosuch")
    one_line_error(pussh(local, "pull", "-F", remote.ssh_config, remote.alias, "Bad Ref"), 2, "invalid reference")
    one_line_error(pussh(local, "pull", "-F", remote.ssh_config, remote.alias), 2, "Missing argument")
    one_line_error(pussh(local, "pull", "--via", "registry", remote.alias, "cmds:pb"), 2, "--via registry")
