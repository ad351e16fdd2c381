"""Try the test bed by hand.

    python -m testbed up [--remote-store containerd|classic|none] [--local-store ...] [--rate 200mbit] [--delay 10ms]
                         [--remotes N] [--detach] [--state FILE]
    python -m testbed down [--state FILE]

`up` prints the environment and ssh commands, then holds everything until Ctrl-C / SIGTERM. With
--detach it runs that same owner process in the background and returns once the hosts are up;
`down` sends it SIGTERM and waits until it has cleaned up.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ._proc import STATE_BASE, TestbedError, pid_alive
from .local import LocalHost
from .remote import RemoteHost

DEFAULT_STATE = STATE_BASE / "up.json"


def _describe(local: LocalHost | None, remotes: list[RemoteHost]) -> dict:
    d: dict = {"pid": os.getpid(), "remotes": []}
    if local:
        d["local"] = {"store": local.store, "env": local.env, "content_root": local.content_root,
                      "logs": str(local.dir / "logs")}
    for r in remotes:
        d["remotes"].append({
            "alias": r.alias, "address": r.address, "store": r.store, "ssh_config": r.ssh_config,
            "ssh": f"ssh -F {r.ssh_config} {r.alias}", "nsenter": f"nsenter -t {r.pid} -m -n -u",
            "docker_socket_outside": r.docker_socket_outside,
            "containerd_socket_outside": r.containerd_socket_outside, "shaping": r.shaping,
            "logs": str(r.dir / "logs")})
    return d


def _print(d: dict) -> None:
    if "local" in d:
        print("# local host:")
        for k, v in d["local"]["env"].items():
            print(f"export {k}={v}")
    for r in d["remotes"]:
        print(f"# remote {r['alias']} ({r['address']}, {r['store']} store, shaping {r['shaping']}):")
        if r["store"] == "none":  # a Kubernetes-like node: no docker, images in ctr's k8s.io namespace
            print(f"#   {r['ssh']} ctr -n k8s.io images ls")
            print(f"#   {r['nsenter']} ctr plugins ls")
        else:
            print(f"#   {r['ssh']} docker info")
            print(f"#   {r['nsenter']} env -u DOCKER_HOST -u CONTAINERD_ADDRESS docker ps")
    sys.stdout.flush()


def cmd_up(a: argparse.Namespace) -> int:
    state = Path(a.state)
    if a.detach:
        argv = [sys.executable, "-m", "testbed", "up", "--state", str(state), "--local-store", a.local_store,
                "--remote-store", a.remote_store, "--remotes", str(a.remotes)]
        argv += (["--rate", a.rate] if a.rate else []) + (["--delay", a.delay] if a.delay else [])
        argv += ["--no-local"] if a.no_local else []
        state.parent.mkdir(parents=True, exist_ok=True)
        state.unlink(missing_ok=True)
        log = state.with_suffix(".log")
        with open(log, "wb") as lf:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=str(Path(__file__).resolve().parents[1]))
        while not state.exists():
            if p.poll() is not None:
                print(log.read_text(), file=sys.stderr)
                return 1
            time.sleep(0.1)
        _print(json.loads(state.read_text()))
        print(f"# detached (pid {p.pid}); stop with: python -m testbed down --state {state}")
        return 0

    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    local, remotes = None, []
    try:
        t0 = time.monotonic()
        local = None if a.no_local else LocalHost(a.local_store)
        for _ in range(a.remotes):
            remotes.append(RemoteHost(a.remote_store, rate=a.rate, delay=a.delay))
        d = _describe(local, remotes)
        print(f"# up in {time.monotonic() - t0:.2f}s")
        _print(d)
        state.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(d, indent=2))
        tmp.rename(state)
        while not stop:
            time.sleep(0.2)
    except TestbedError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1
    finally:
        for r in reversed(remotes):
            r.stop()
        if local:
            local.stop()
        if state.exists() and json.loads(state.read_text()).get("pid") == os.getpid():
            state.unlink()
        print("# down", flush=True)
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    state = Path(a.state)
    if not state.exists():
        print(f"testbed: no {state}: nothing is up", file=sys.stderr)
        return 1
    pid = json.loads(state.read_text())["pid"]
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 180
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    state.unlink(missing_ok=True)
    print("# down")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--remote-store", choices=["containerd", "classic", "none"], default="containerd")
    up.add_argument("--local-store", choices=["containerd", "classic"], default="containerd")
    up.add_argument("--remotes", type=int, default=1)
    up.add_argument("--no-local", action="store_true")
    up.add_argument("--rate")
    up.add_argument("--delay", help="one way, e.g. 10ms (RTT = 2 x delay)")
    up.add_argument("--detach", action="store_true")
    up.add_argument("--state", default=str(DEFAULT_STATE))
    down = sub.add_parser("down")
    down.add_argument("--state", default=str(DEFAULT_STATE))
    a = ap.parse_args(argv)
    return cmd_up(a) if a.cmd == "up" else cmd_down(a)


if __name__ == "__main__":
    sys.exit(main())
