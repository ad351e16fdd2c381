"""Support for pussh's end-to-end tests: the registry image built once, test images made FROM scratch,
and running the real `pussh` CLI as a subprocess against the test bed's hosts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import testbed

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python") if (REPO_ROOT / ".venv").exists() else sys.executable
REGISTRY_IMAGE = "pussh-registry:test"


def build_registry_image(host) -> str:
    """The registry image from the repo's Dockerfile on a test-bed docker host (once per host)."""
    return testbed.build_registry_image(host, REGISTRY_IMAGE)


def build_app_image(host, tag: str, sizes_mib: list[int], seed: str, last_seed: str | None = None) -> str:
    """A FROM-scratch image: busybox + one random-data layer per size. Layers are determined by
    (seed, index), and the last one by `last_seed` when given: two tags with the same seed and
    different last seeds differ in the last layer only."""
    ctx = Path(tempfile.mkdtemp(prefix="pussh-app-"))
    try:
        (ctx / "base/bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", ctx / "base/bin/busybox")
        for a in ("sh", "cat", "md5sum", "ls"):
            os.symlink("busybox", ctx / "base/bin" / a)
        (ctx / "base/etc").mkdir()
        (ctx / "base/etc/image-seed").write_text(seed)  # no two image families share a base layer
        lines = ["FROM scratch", "COPY base/ /"]
        for i, size in enumerate(sizes_mib):
            s = last_seed if (last_seed and i == len(sizes_mib) - 1) else seed
            d = ctx / f"l{i}"
            d.mkdir()
            _random_file(d / "data.bin", size << 20, f"{s}-{i}")
            lines.append(f"COPY l{i}/ /data/l{i}/")
        lines.append('CMD ["/bin/sh", "-c", "cat /data/*/data.bin | md5sum"]')
        (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
        host.docker("build", "-q", "--network", "none", "-t", tag, str(ctx), timeout=300)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return tag


def _random_file(path: Path, size: int, seed: str) -> None:
    import hashlib
    block = hashlib.sha512(seed.encode()).digest()
    with open(path, "wb") as f:
        n = 0
        # deterministic and incompressible enough: a hash chain, 64 bytes at a time, in 1 MiB writes
        while n < size:
            buf = bytearray()
            while len(buf) < min(1 << 20, size - n):
                block = hashlib.sha512(block).digest()
                buf += block
            f.write(buf[: size - n])
            n += len(buf[: size - n])


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def last_error(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def pussh(local, *args: str, timeout: float = 600, env: dict | None = None) -> Run:
    """Run the real CLI with the local host's DOCKER_HOST / CONTAINERD_ADDRESS."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("DOCKER_HOST", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE", "SSH_AUTH_SOCK")}
    full_env.update(local.env)
    full_env.update(env or {})
    t0 = time.monotonic()
    p = subprocess.run([PYTHON, "-m", "pussh", *args], capture_output=True, text=True, timeout=timeout,
                       env=full_env, cwd=str(REPO_ROOT))
    return Run(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
