"""Measuring one push: wall time, bytes on the link, CPU seconds and peak RSS of the processes involved.

- Processes we start (the client side: pussh, `docker save`/`docker push` CLIs, ssh) are reaped with
  wait4(), whose rusage gives their CPU and peak RSS, children included.
- Long-lived daemons (containerd, dockerd, sshd on both sides; a distribution registry): utime+stime
  +cutime+cstime from /proc/PID/stat before and after (cutime covers their reaped children: sshd's
  sessions and the `docker load`/`docker pull` CLIs they ran). Peak RSS of a long-lived registry:
  VmHWM after resetting it (`echo 5 > /proc/PID/clear_refs`) at the start.
- Time to first byte on the wire: the server veths' counters, sampled every 5 ms from the start of
  the push: `first_byte` = the first sample with any traffic (the SSH connect), `first_data` = the
  moment the bytes passed DATA_MARK (128 kB: more than a whole no-op push, SSH handshake + probe +
  HEADs, ~21 kB; i.e. image data flowing), interpolated between samples.
- pussh's registry lives in a container started and removed within the push: it is found by name in
  /proc while the push runs and polled every 50 ms (VmHWM, CPU); at most one interval of its CPU at
  exit is missed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
DATA_MARK = 128_000  # bytes on the link after which image data is flowing (a no-op push is ~21 kB)
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- /proc helpers ---------------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu(pid: int, children: bool = True) -> float | None:
    """CPU seconds of pid (+ its reaped children)."""
    f = _stat_fields(pid)
    if f is None:
        return None
    # after the ")": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14 ... starttime=19
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / CLK_TCK


def proc_start(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def proc_ppid(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[1]) if f else None


def proc_hwm(pid: int) -> int | None:
    """Peak RSS (VmHWM) in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_hwm(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit() and proc_ppid(int(p)) == pid:
            out.append(int(p))
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]
    total = sum(v[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


# -- running client commands -----------------------------------------------------------------------------
@dataclass
class Ran:
    argv: list[str]
    rc: int
    seconds: float
    cpu: float
    maxrss: int  # bytes: the largest process of the tree
    stdout: str
    stderr: str


LIVE: set["Client"] = set()
DEFAULT_TIMEOUT = 900.0  # seconds: a hung push must not hang the whole benchmark


class Client:
    """A client-side process started by the benchmark (in its own process group, so that a timeout or
    Ctrl-C ends the whole pipeline it runs) and reaped with wait4 (rusage of its tree)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], workdir: Path, name: str, cwd: str | None = None,
                 stdin=subprocess.DEVNULL, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.argv = list(argv)
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        self.timed_out = False
        self.t0 = time.monotonic()
        with open(self.out, "wb") as o, open(self.err, "wb") as e:
            self.proc = subprocess.Popen(self.argv, env=env, stdin=stdin, stdout=o, stderr=e, cwd=cwd,
                                         start_new_session=True)
        LIVE.add(self)
        self._timer = threading.Timer(timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """The process group we created (its pgid is the pid we started), while not yet reaped."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self) -> Ran:
        try:
            _, status, ru = os.wait4(self.proc.pid, 0)
        finally:
            self._timer.cancel()
        secs = time.monotonic() - self.t0
        rc = os.waitstatus_to_exitcode(status)
        self.proc.returncode = rc  # reaped here: Popen must not wait again
        LIVE.discard(self)
        err = self.err.read_text(errors="replace")
        if self.timed_out:
            err += f"\n(benchmark: killed after the {secs:.0f} s timeout)"
        return Ran(self.argv, rc, secs, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024,
                   self.out.read_text(errors="replace"), err)

    def terminate(self) -> Ran:
        if self.proc.returncode is None:
            try:
                self.proc.terminate()
            except ProcessLookupError:
                pass
        return self.wait()


def kill_all() -> None:
    """Every client process group still running (after Ctrl-C or an error), then reap them."""
    for c in list(LIVE):
        c.kill()
        try:
            c.wait()
        except ChildProcessError:
            LIVE.discard(c)


def run_client(argv: Sequence[str], env: dict[str, str], workdir: Path, name: str, **kw) -> Ran:
    return Client(argv, env, workdir, name, **kw).wait()


# -- the probe around one push -------------------------------------------------------------------------
@dataclass
class Watched:
    base_cpu: float
    last_cpu: float
    peak: int = 0


@dataclass
class ProbeResult:
    link_tx: int = 0
    link_rx: int = 0
    registry_cpu: float = 0.0
    registry_rss: int = 0  # the largest registry process (one per server)
    registry_procs: int = 0
    daemons_cpu: dict[str, float] = field(default_factory=dict)
    delayer_cpu: float = 0.0
    machine_busy: float = 0.0  # share of the machine's CPUs busy (anyone's work) during the push
    first_byte: float | None = None  # s from the start to the first byte on the link (either way)
    first_data: float | None = None  # s from the start until DATA_MARK bytes crossed the link
    loadavg: float = 0.0


class Probe:
    """Counters before and after one push, and a 50 ms poller for the registry processes.

    daemons: name -> pid (CPU incl. reaped children, delta); registry_pids: long-lived registries
    (CPU delta, VmHWM reset at start); registry_comm: the process name of registries that appear
    during the push (pussh's container) in one of `netns` (inode numbers)."""

    def __init__(self, link, daemons: dict[str, int], registry_pids: Sequence[int] = (),
                 registry_comm: str | None = None, netns: Sequence[int | None] = (),
                 delayers: Sequence[int] = (), interval: float = 0.05) -> None:
        self.link = link  # () -> (tx, rx)
        self.daemons = daemons
        self.registry_pids = list(registry_pids)
        self.registry_comm = registry_comm
        self.netns = {n for n in netns if n is not None}
        self.delayers = list(delayers)
        self.interval = interval
        self.watched: dict[tuple[int, int], Watched] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wire: threading.Thread | None = None
        self.first_byte: float | None = None
        self.first_data: float | None = None

    def _ns(self, pid: int) -> int | None:
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None

    def _watch(self, pid: int, baseline: bool) -> None:
        st = proc_start(pid)
        cpu = proc_cpu(pid, children=True)
        if st is None or cpu is None:
            return
        key = (pid, st)
        w = self.watched.get(key)
        if w is None:
            w = self.watched[key] = Watched(cpu if baseline else 0.0, cpu)
        w.last_cpu = cpu
        w.peak = max(w.peak, proc_hwm(pid) or 0)

    def _scan(self, baseline: bool) -> None:
        if not self.registry_comm:
            return
        for p in os.listdir("/proc"):
            if p.isdigit() and comm(int(p)) == self.registry_comm and (not self.netns or self._ns(int(p)) in self.netns):
                self._watch(int(p), baseline)

    def _poll(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            for key in list(self.watched):
                if key[0] not in self.registry_pids:
                    self._watch(key[0], baseline=False)
            n += 1
            if n % 4 == 0:  # new registry processes: a full /proc scan every 200 ms
                self._scan(baseline=False)

    def _sample_wire(self) -> None:
        base = sum(self.l0)
        prev_t, prev_n = self.t_start, 0
        while not self._stop.wait(0.005):
            t, n = time.monotonic(), sum(self.link()) - base
            if n > 0 and self.first_byte is None:
                self.first_byte = t - self.t_start  # some time in (prev_t, t]: the later bound
            if n >= DATA_MARK:
                f = (DATA_MARK - prev_n) / (n - prev_n) if n > prev_n else 1.0
                self.first_data = prev_t - self.t_start + f * (t - prev_t)
                return
            prev_t, prev_n = t, n

    def start(self) -> "Probe":
        for pid in self.registry_pids:
            reset_hwm(pid)
        self._scan(baseline=True)
        for pid in self.registry_pids:
            self._watch(pid, baseline=True)
        self.d0 = {k: proc_cpu(p) or 0.0 for k, p in self.daemons.items()}
        self.dl0 = sum(proc_cpu(p) or 0.0 for p in self.delayers)
        self.l0 = self.link()
        self.m0 = machine_cpu()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        self.t_start = time.monotonic()
        self._wire = threading.Thread(target=self._sample_wire, daemon=True)
        self._wire.start()
        return self

    def stop(self) -> ProbeResult:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._wire:
            self._wire.join()
        for key in list(self.watched):
            self._watch(key[0], baseline=False)
        l1 = self.link()
        m1 = machine_cpu()
        r = ProbeResult(link_tx=l1[0] - self.l0[0], link_rx=l1[1] - self.l0[1])
        r.first_byte = None if self.first_byte is None else round(self.first_byte, 3)
        r.first_data = None if self.first_data is None else round(self.first_data, 3)
        r.daemons_cpu = {k: round((proc_cpu(p) or 0.0) - self.d0[k], 3) for k, p in self.daemons.items()}
        r.delayer_cpu = round(sum(proc_cpu(p) or 0.0 for p in self.delayers) - self.dl0, 3)
        for w in self.watched.values():
            r.registry_cpu += max(w.last_cpu - w.base_cpu, 0.0)
            r.registry_rss = max(r.registry_rss, w.peak)
        r.registry_cpu = round(r.registry_cpu, 3)
        r.registry_procs = len(self.watched)
        dt_total = m1[1] - self.m0[1]
        r.machine_busy = round((m1[0] - self.m0[0]) / dt_total, 3) if dt_total > 0 else 0.0
        r.loadavg = float(Path("/proc/loadavg").read_text().split()[0])
        return r
