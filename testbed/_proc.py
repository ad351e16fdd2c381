"""Process, slot and file helpers shared by the test bed (stdlib only)."""
from __future__ import annotations

import atexit
import errno
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

STATE_BASE = Path(os.environ.get("PUSSH_TESTBED_STATE", "/tmp/ptb"))  # short: unix socket paths <= 108 chars
LOCK_DIR = Path("/run/pussh-testbed")
CACHE_DIR = Path("/var/cache/pussh-testbed")
MAX_SLOT = 250


# hosts not yet stopped: an atexit hook stops them if a script forgets (not on SIGKILL: the next run
# that takes the same slot sweeps the leftovers)
LIVE: list = []


@atexit.register
def _stop_live() -> None:
    for h in reversed(list(LIVE)):
        try:
            h.stop()
        except Exception:
            pass


class TestbedError(RuntimeError):
    """A daemon or a setup step failed; the message carries the reason and a log tail."""

    __test__ = False  # not a pytest test class


def tail(path: Path | str, n: int = 30) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(lines[-n:])


def run(argv: Sequence[str], *, check: bool = True, input: str | bytes | None = None, text: bool = True,
        env: dict[str, str] | None = None, timeout: float | None = None,
        cwd: str | None = None) -> subprocess.CompletedProcess:
    """subprocess.run with captured output (decoded unless text=False, whatever the input type);
    on failure raise TestbedError carrying stdout/stderr tails (readable in a pytest report)."""
    data = input.encode() if isinstance(input, str) else input
    cp = subprocess.run(list(argv), input=data, capture_output=True, env=env, timeout=timeout, cwd=cwd)
    if text:
        cp.stdout, cp.stderr = cp.stdout.decode(errors="replace"), cp.stderr.decode(errors="replace")
    if check and cp.returncode != 0:
        out, err = (x if isinstance(x, str) else x.decode(errors="replace") for x in (cp.stdout, cp.stderr))
        raise TestbedError(f"command failed (rc={cp.returncode}): {' '.join(map(str, argv))}\n"
                           f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    return cp


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def unix_connectable(path: Path | str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def docker_ping(path: Path | str) -> bool:
    """GET /_ping on a docker API unix socket: cheaper than spawning the CLI in a poll loop."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(str(path))
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        return b" 200 " in s.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    finally:
        s.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); treat it as dead
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for pid in all_pids():
        try:
            out[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def with_descendants(roots: Iterable[int]) -> set[int]:
    """roots plus all their descendants (container processes of a shim, ssh session children, ...)."""
    pm = ppid_map()
    children: dict[int, list[int]] = {}
    for pid, pp in pm.items():
        children.setdefault(pp, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r > 1]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(children.get(p, []))
    return seen


def ns_inode(pid: int | str, kind: str = "net") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def pids_in_netns(inode: int) -> list[int]:
    me = os.getpid()
    return [p for p in all_pids() if p != me and ns_inode(p) == inode]


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for p in pids:
        if p <= 1 or p == os.getpid():
            continue
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


class Daemon:
    """A long-running child in its own session (Ctrl-C in the terminal must not reach it; we stop it)."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 pidfile: Path | None = None) -> None:
        self.name, self.argv, self.log = name, list(argv), log
        with open(log, "ab") as lf:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env, cwd="/")
        self.pid = self.proc.pid
        if pidfile is not None:  # for crash recovery by a later run (stale slot sweep)
            with open(pidfile, "a") as f:
                f.write(f"{self.pid} {start_time(self.pid)} {self.argv[0]}\n")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise TestbedError(f"{self.name} exited with {self.proc.returncode}; log {self.log}:\n{tail(self.log)}")

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.kill(self.pid, sig)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.stop(timeout=10, sig=signal.SIGKILL)


class Slot:
    """A unique small integer N, held with an exclusive fcntl lock on /run/pussh-testbed/<kind><N>.lock.

    The lock dies with its holder process, so a slot whose lock can be taken either was never used or
    belongs to a crashed run: the caller then sweeps that slot's leftovers before reusing it.
    """

    def __init__(self, kind: str, first: int = 1) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for n in range(first, MAX_SLOT + 1):
            fd = os.open(LOCK_DIR / f"{kind}{n}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    continue
                raise
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.n, self.fd, self.kind = n, fd, kind
            return
        raise TestbedError(f"no free test bed slot of kind {kind!r} (all {MAX_SLOT} locked)")

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: (pid, start time) names a process even after PID reuse."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def kill_recorded(pidfile: Path) -> None:
    """Kill the processes (and their children) a crashed run recorded, if they are still those processes."""
    try:
        lines = pidfile.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        try:
            pid, started = (int(x) for x in line.split()[:2])
        except ValueError:
            continue
        if start_time(pid) == started:
            kill_pids(with_descendants([pid]))


def umount_under(prefix: Path) -> None:
    """Lazily unmount whatever a killed daemon left mounted under prefix (deepest first)."""
    pre = str(prefix).rstrip("/") + "/"
    mps = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].encode().decode("unicode_escape")
        if mp.startswith(pre):
            mps.append(mp)
    for mp in sorted(mps, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
