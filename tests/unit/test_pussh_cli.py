"""CLI input errors: one line on stderr, no traceback, the right exit code; plugin metadata."""
import json
import subprocess
import sys

import pytest

from oci import reference as R
from pussh.source import repository_path


def run(*args, entry="main", env=None):
    code = f"import sys; from pussh.cli import {entry}; sys.exit({entry}())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env)


def one_line_error(p, fragment, code):
    assert p.returncode == code, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["My/App", "host"], "invalid reference format"),
    (["myapp:bad tag", "host"], "invalid"),
    (["myapp@sha256:zz", "host"], "invalid digest"),
    (["myapp:1", "host:99999"], "invalid port"),
    (["myapp:1", "bad host"], "invalid host"),
    (["myapp:1", "host", "--platform", "linux"], "invalid platform"),
    (["myapp:1"], "Missing argument"),
    (["myapp:1", "host", "--jobs", "0"], "--jobs"),
    (["myapp:1", "host", "--bogus"], "No such option"),
])
def test_usage_errors(args, fragment):
    one_line_error(run(*args), fragment, 2)


def test_no_such_local_image(tmp_path):
    # A containerd socket path that does not exist: the local store cannot be opened.
    p = run("myapp:1", "host", "--containerd-socket", str(tmp_path / "none.sock"),
            "--docker-host", f"unix://{tmp_path}/none.sock")
    one_line_error(p, "containerd", 1)


def test_version_and_help():
    import tomllib
    from pathlib import Path
    declared = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["version"]
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"pussh, version {declared}"
    p = run("--help")
    assert p.returncode == 0 and "--platform" in p.stdout and "--jobs" in p.stdout


def test_plugin_metadata(monkeypatch):
    p = run("docker-cli-plugin-metadata", entry="plugin_main")
    assert p.returncode == 0
    meta = json.loads(p.stdout)
    assert meta["SchemaVersion"] == "0.1.0" and meta["Vendor"] == "pussh"


def test_plugin_drops_leading_pussh():
    p = run("pussh", "--version", entry="plugin_main")
    assert p.returncode == 0 and "pussh" in p.stdout
    p = run("pussh", "My/App", "host", entry="plugin_main")
    one_line_error(p, "invalid reference format", 2)
    assert p.stderr.startswith("docker pussh:")


@pytest.mark.parametrize("image, repo", [
    ("myapp:1", "library/myapp"),
    ("user/app", "user/app"),
    ("ghcr.io/x/y:2", "ghcr.io/x/y"),
    ("docker.io/library/busybox", "library/busybox"),
])
def test_repository_path(image, repo):
    assert repository_path(R.parse(image)) == repo


def test_plugin_skips_docker_global_options():
    p = run("--config", "/tmp/x", "-H", "unix:///nowhere.sock", "--debug", "pussh", "--version", entry="plugin_main")
    assert p.returncode == 0 and "pussh" in p.stdout, p.stderr


def test_as_docker_cli_plugin(tmp_path):
    """The real docker CLI finds and runs docker-pussh from a config directory's cli-plugins."""
    import shutil
    from pathlib import Path
    script = Path(sys.executable).with_name("docker-pussh")
    if not shutil.which("docker") or not script.exists():
        pytest.fail("needs the docker CLI and the installed docker-pussh script (scripts/setup.sh)")
    (tmp_path / "cli-plugins").mkdir()
    (tmp_path / "cli-plugins" / "docker-pussh").symlink_to(script)
    p = subprocess.run(["docker", "--config", str(tmp_path), "pussh", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "pussh" in p.stdout, p.stderr
    p = subprocess.run(["docker", "--config", str(tmp_path), "pussh", "Bad Ref", "host"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("docker pussh: invalid reference format"), p.stderr
