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
    (["--to", "host"], "Missing argument 'IMAGE'"),
    (["a:1", "b:2", "a:1", "--to", "host"], "given twice"),
    (["a:1", "--to", "h", "--to", "h"], "given twice"),
    (["Bad Ref", "--to", "h"], "invalid reference format"),
    (["compose"], "Missing argument"),
    (["completion", "tcsh"], "tcsh"),
    (["pull", "host"], "Missing argument"),
    (["pull", "host", "Bad Ref"], "invalid reference format"),
    (["pull", "host", "app:1", "--via", "load"], "pull reads the server's containerd directly"),
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


@pytest.mark.parametrize("argv, routed", [
    (["app:1", "web1"], ["push", "app:1", "web1"]),
    (["-F", "cfg", "app:1", "web1"], ["push", "-F", "cfg", "app:1", "web1"]),
    (["-F", "compose", "app:1", "h"], ["push", "-F", "compose", "app:1", "h"]),  # an option's value is no command
    (["--json", "compose", "-f", "c.yml", "h"], ["compose", "--json", "-f", "c.yml", "h"]),
    (["push", "compose", "h"], ["push", "compose", "h"]),  # an image called like a command
    (["--", "compose", "h"], ["push", "--", "compose", "h"]),
    (["--help"], ["--help"]),
    (["--version"], ["--version"]),
    (["app:1", "--help"], ["push", "app:1", "--help"]),
    ([], ["push"]),
    (["install-docker-plugin"], ["install-docker-plugin"]),
])
def test_routing(argv, routed):
    from pussh.cli import cli
    assert cli.route(argv) == routed


def test_help_lists_commands_and_ends_with_three_examples():
    p = run("--help")
    assert p.returncode == 0
    assert "--to" in p.stdout and "--dry-run" in p.stdout
    for cmd in ("compose", "install-docker-plugin", "completion", "pull", "push"):
        assert f"  {cmd} " in p.stdout
    tail = p.stdout.rstrip().split("Examples:")[-1]
    assert p.stdout.count("Examples:") == 1 and tail.count("\n  pussh ") == 3, tail
    sub = run("compose", "--help")
    assert sub.returncode == 0 and "--project-name" in sub.stdout and "-F, --ssh-config" in sub.stdout


def test_shell_completion(tmp_path):
    import os
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host web1 web2 *.internal\n  User ops\nHost db\n")
    env = {**os.environ, "HOME": str(tmp_path), "_PUSSH_COMPLETE": "bash_complete"}
    p = run(env={**env, "COMP_WORDS": "pussh comp", "COMP_CWORD": "1"})
    assert p.returncode == 0 and set(p.stdout.split()) == {"plain,compose", "plain,completion"}, p.stdout + p.stderr
    p = run(env={**env, "COMP_WORDS": "pussh app:1 we", "COMP_CWORD": "2"})
    assert set(p.stdout.split()) == {"plain,web1", "plain,web2"}, p.stdout + p.stderr
    p = run(env={**env, "COMP_WORDS": "pussh compose ", "COMP_CWORD": "2"})
    assert set(p.stdout.split()) == {"plain,web1", "plain,web2", "plain,db"}, p.stdout + p.stderr
    for shell, marker in (("bash", "_PUSSH_COMPLETE=bash_complete"), ("zsh", "#compdef pussh"),
                          ("fish", "_PUSSH_COMPLETE=fish_complete")):
        p = run("completion", shell)
        assert p.returncode == 0 and marker in p.stdout, (shell, p.stdout[:300])


def test_install_docker_plugin_without_an_entry_point(tmp_path, monkeypatch, capsys):
    """No docker-pussh beside pussh or the interpreter, none on PATH: one line, exit 1, nothing made."""
    from pussh.cli import main
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "bin" / "pussh")])
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert main(["install-docker-plugin", "--config", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no docker-pussh entry point" in err[0]
    assert not (tmp_path / "d").exists()
