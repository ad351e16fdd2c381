"""Test images without any registry: FROM-scratch busybox + generated data layers, and a Python base
image from debootstrap. Everything is built through a host's own `docker` (LocalHost or RemoteHost).

Layer contents are deterministic (SHAKE-128 of seed/layer/chunk, fixed mtimes), so the same call
gives byte-identical layers on any host and any run; only the LAST layer depends on `variant`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from ._proc import CACHE_DIR, STATE_BASE, TestbedError, run, tail

MiB = 1 << 20
EPOCH = 1_700_000_000  # fixed mtime: the layer tar must not depend on when the context was written
BUSYBOX_APPLETS = ("sh", "ls", "cat", "cp", "du", "env", "echo", "md5sum", "sha256sum", "sleep", "true",
                   "false", "test", "wc", "head")


class DockerHost(Protocol):
    def docker(self, *args: str, check: bool = True, input: str | bytes | None = None,
               timeout: float | None = None) -> subprocess.CompletedProcess: ...


def _busybox() -> Path:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(p).exists():
            return Path(p)
    raise TestbedError("busybox not found: run scripts/install-system.sh (busybox-static)")


def _write_random(path: Path, size: int, key: str) -> None:
    chunk = 4 * MiB
    with open(path, "wb") as f:
        for i, off in enumerate(range(0, size, chunk)):
            f.write(hashlib.shake_128(f"{key}/{i}".encode()).digest(min(chunk, size - off)))


_TEXT: bytes | None = None


def _text_corpus() -> bytes:
    """~4 MiB of real, compressible text: the Python stdlib sources of this machine (else numbers)."""
    global _TEXT
    if _TEXT is None:
        parts, total = [], 0
        for p in sorted(Path("/usr/lib/python3.11").glob("*.py")) + sorted(Path("/usr/lib/python3.11").glob("*/*.py")):
            with contextlib.suppress(OSError):
                b = p.read_bytes()
                parts.append(b)
                total += len(b)
            if total > 4 * MiB:
                break
        text = b"".join(parts)
        if len(text) < 4 * MiB:
            text = "\n".join(str(i * 7919) for i in range(600_000)).encode()
        _TEXT = text
    return _TEXT


def _write_text(path: Path, size: int, label: str) -> None:
    text = _text_corpus()
    body = (f"# {label}\n".encode() + text * (size // len(text) + 1))[:size]
    path.write_bytes(body)


def _fix_tree(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            p = Path(dirpath, n)
            if not p.is_symlink():
                os.chmod(p, 0o755 if p.is_dir() or n == "busybox" else 0o644)
            os.utime(p, (EPOCH, EPOCH), follow_symlinks=False)
        os.chmod(dirpath, 0o755)
        os.utime(dirpath, (EPOCH, EPOCH))


def _tag_v2(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return f"{name}-v2" if ":" in last else f"{name}:latest-v2"


def make_context(ctx: Path, sizes_mb: Sequence[float], seed: str, variants: Sequence[int],
                 text_mb: float = 3) -> None:
    """Build context: layer 0 busybox, one layer per size; the last layer has one dir per variant."""
    if not sizes_mb:
        raise ValueError("sizes_mb must list at least one layer size")
    base = ctx / "base/bin"
    base.mkdir(parents=True)
    shutil.copyfile(_busybox(), base / "busybox")
    for a in BUSYBOX_APPLETS:
        (base / a).symlink_to("busybox")
    lines = ["FROM scratch", "COPY base/ /"]
    last = len(sizes_mb) - 1
    for i, mb in enumerate(sizes_mb):
        for v in (variants if i == last else [0]):
            key = f"{seed}/{i}" + (f"/v{v}" if i == last else "")
            d = ctx / (f"layer{i}" if i < last else f"layer{i}-v{v}") / f"data/layer{i}"
            d.mkdir(parents=True)
            _write_random(d / "random.bin", int(mb * MiB), key)
            _write_text(d / "notes.txt", int(text_mb * MiB), key)
        lines.append(f"COPY layer{i}/ /" if i < last else f"ARG LAST\nCOPY layer{i}-v${{LAST}}/ /")
    lines.append('CMD ["/bin/sh"]')
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    _fix_tree(ctx)


@contextlib.contextmanager
def _tmp_context() -> Iterator[Path]:
    STATE_BASE.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="ctx-", dir=STATE_BASE))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def build_test_images(host: DockerHost, names: dict[str, int], sizes_mb: Sequence[float], *,
                      seed: str | None = None, text_mb: float = 3, network: str = "none") -> list[str]:
    """Build several variants (name -> variant number) of one layer stack from one context."""
    seed = seed if seed is not None else next(iter(names))
    with _tmp_context() as ctx:
        make_context(ctx, sizes_mb, seed, sorted(set(names.values())), text_mb)
        for name, v in names.items():
            host.docker("build", "-q", "--network", network, "--build-arg", f"LAST={v}", "-t", name, str(ctx),
                        timeout=1800)
    return list(names)


def build_test_image(host: DockerHost, name: str, sizes_mb: Sequence[float], *, seed: str | None = None,
                     variant: int = 1, text_mb: float = 3, network: str = "none") -> str:
    """FROM scratch: busybox layer + one layer per size (random data + text_mb of text). Same seed =>
    identical layers everywhere; `variant` changes only the last layer."""
    return build_test_images(host, {name: variant}, sizes_mb, seed=seed, text_mb=text_mb, network=network)[0]


def build_test_image_pair(host: DockerHost, name: str, sizes_mb: Sequence[float], *, seed: str | None = None,
                          text_mb: float = 3, v2_name: str | None = None) -> tuple[str, str]:
    """`name` and `name-v2` ("app:1" -> "app:1-v2"): identical except for the last layer."""
    v2 = v2_name or _tag_v2(name)
    build_test_images(host, {name: 1, v2: 2}, sizes_mb, seed=seed if seed is not None else name, text_mb=text_mb)
    return name, v2


def build_files_images(host: DockerHost, names: dict[str, int], total_mb: float, files: int, *,
                       seed: str, changed: float = 0.01, network: str = "none") -> list[str]:
    """Variants (name -> 0, 1, 2...) of a FROM-scratch image whose big layer holds `files` files of
    random data, total_mb in all (a dependency layer of many files). Variant v is variant v-1 with
    about `changed` of its files rewritten or added (half each), the rest byte-identical: the case
    a sub-layer delta is for. The busybox layer is the same in all. The image's command prints the
    md5sum of every file of the big layer."""
    size = int(total_mb * MiB / files)
    step = max(1, round(files * changed / 2))  # files rewritten (and as many added) per variant
    with _tmp_context() as ctx:
        base = ctx / "base/bin"
        base.mkdir(parents=True)
        shutil.copyfile(_busybox(), base / "busybox")
        for a in (*BUSYBOX_APPLETS, "find", "sort", "xargs"):
            (base / a).symlink_to("busybox")
        for v in sorted(set(names.values())):
            d = ctx / f"v{v}/deps"
            for i in range(files):
                sub = d / f"pkg{i // 100:03d}"
                sub.mkdir(parents=True, exist_ok=True)
                last = (i * 7919) % files // step + 1  # the variant that rewrites file i (a spread-out order)
                _write_random(sub / f"f{i:05d}.bin", size, f"{seed}/{i}" + (f"/v{last}" if last <= v else ""))
            if v:
                (d / "added").mkdir()
            for i in range(step * v):
                _write_random(d / "added" / f"a{i:05d}.bin", size, f"{seed}/added/{i}")
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY base/ /\nARG V\nCOPY v${V}/ /\n"
                                        'CMD ["/bin/sh", "-c", "cd /deps && find . -type f | sort | xargs md5sum"]\n')
        _fix_tree(ctx)
        for name, v in names.items():
            host.docker("build", "-q", "--network", network, "--build-arg", f"V={v}", "-t", name, str(ctx),
                        timeout=1800)
    return list(names)


# -- Python base image -------------------------------------------------------------------------------------
PY_PACKAGES = ("python3", "python3-venv", "python3-pip")
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _mirrors() -> tuple[str, str | None]:
    main, sec = "http://deb.debian.org/debian", None
    src = Path("/etc/apt/sources.list.d/debian.sources")
    if src.exists():
        uris = [ln.split()[1] for ln in src.read_text().splitlines() if ln.startswith("URIs:")]
        main = next((u for u in uris if "security" not in u), main)
        sec = next((u for u in uris if "security" in u), None)
    return main, sec


def python_rootfs(packages: Sequence[str] = PY_PACKAGES, suite: str = "bookworm") -> Path:
    """debootstrap minbase + apt in a chroot, as a tarball cached in /var/cache/pussh-testbed (70-90 s once)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{suite} {' '.join(sorted(packages))}".encode()).hexdigest()[:12]
    tarball = CACHE_DIR / f"rootfs-{suite}-{key}.tar"
    with open(CACHE_DIR / f"rootfs-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs: one builds, the others wait and reuse
        if tarball.exists():
            return tarball
        if not shutil.which("debootstrap"):
            raise TestbedError("debootstrap missing: run scripts/install-system.sh")
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
        root, log = work / "root", CACHE_DIR / f"rootfs-{key}.log"
        try:
            main, sec = _mirrors()
            with open(log, "w") as lf:
                if subprocess.run(["debootstrap", "--variant=minbase", suite, str(root), main],
                                  stdout=lf, stderr=subprocess.STDOUT).returncode:
                    raise TestbedError(f"debootstrap failed:\n{tail(log)}")
            srcs = [f"deb {main} {suite} main", f"deb {main} {suite}-updates main"]
            if sec:
                srcs.append(f"deb {sec} {suite}-security main")
            (root / "etc/apt/sources.list").write_text("\n".join(srcs) + "\n")
            shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
            policy = root / "usr/sbin/policy-rc.d"  # no service starts inside the chroot
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            # private mount namespace: the chroot's /proc disappears with it
            script = (f"mount -t proc proc {root}/proc\n"
                      f"chroot {root} apt-get update -q\n"
                      f"chroot {root} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                      f"--no-install-recommends {' '.join(packages)}\n"
                      f"chroot {root} apt-get clean\n")
            with open(log, "a") as lf:
                if subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-ec", script],
                                  stdout=lf, stderr=subprocess.STDOUT).returncode:
                    raise TestbedError(f"apt-get in the chroot failed:\n{tail(log)}")
            policy.unlink()
            shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
            (root / "etc/resolv.conf").write_text("")
            run(["tar", "--numeric-owner", "-C", str(root), "--exclude=./dev/*", "--exclude=./proc/*",
                 "--exclude=./sys/*", "-cf", str(work / "rootfs.tar"), "."])
            os.replace(work / "rootfs.tar", tarball)
        finally:
            subprocess.run(["rm", "-rf", str(work)])
    return tarball


def build_python_base(host: DockerHost, name: str = "localbase/python:3.11", *,
                      packages: Sequence[str] = PY_PACKAGES, force: bool = False) -> str:
    """`docker import` of the cached debootstrap rootfs (python3, venv, pip) into host as `name`."""
    if not force and host.docker("image", "inspect", name, check=False).returncode == 0:
        return name
    tarball = python_rootfs(packages)
    host.docker("import", "-c", "ENV LANG=C.UTF-8", "-c", 'CMD ["python3"]', str(tarball), name, timeout=600)
    return name


def build_registry_image(host: DockerHost, name: str, *, force: bool = False) -> str:
    """The repository's Dockerfile built on `host` from the debootstrap Python base (nothing can be
    pulled here); its RUN step reaches PyPI through the host's network, trusting what the host trusts
    (the CA bundle goes in as a build secret, for TLS-inspecting proxies)."""
    if not force and host.docker("image", "inspect", name, check=False).returncode == 0:
        return name
    base = build_python_base(host)
    secret = ["--secret", f"id=pipcert,src={HOST_CA}"] if os.path.exists(HOST_CA) else []
    host.docker("build", "-q", "--network", "host", *secret, "--build-arg", f"BASE_IMAGE={base}", "-t", name,
                str(REPO_ROOT), timeout=900)
    return name
