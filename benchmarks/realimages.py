"""Images people actually push, built here with nothing pulled: a Debian base (debootstrap + `docker
import`, Python 3.11 with venv and pip: `testbed.build_python_base`) and on it

- web:  a `pip install` layer of common web dependencies + a small application layer
- data: a large dependency layer (numpy, pandas, scipy) + a small application layer

Each family has four tags: `base` (the Debian base alone), `1` (base + deps + app), `app2` (only the
application layer changed: one source file edited) and `dep2` (one dependency added: the dependency
layer rebuilt, the same application). The build steps reach PyPI (`docker build --network host`,
the host's CA bundle as the `pipcert` build secret for a TLS-inspecting proxy) with pinned versions;
the built family is cached as one `docker save` tar in the benchmark cache, keyed by its Dockerfile and
sources. `layer_stats` reads each layer of the local containerd store: compressed size, uncompressed
size and file count.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import testbed

HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class RealImage:
    family: str
    what: str
    deps: tuple[str, ...]
    added: str  # the dependency added in `dep2`
    app_files: int  # small Python modules in the application layer

    def tag(self, v: str) -> str:
        return f"bench/{self.family}:{v}"


WEB = RealImage("web", "Debian 12 + Python 3.11 base, web dependencies, a small application",
                ("flask==3.0.3", "django==5.0.6", "fastapi==0.110.3", "uvicorn==0.30.1", "gunicorn==22.0.0",
                 "requests==2.32.3", "sqlalchemy==2.0.31", "jinja2==3.1.4", "psycopg2-binary==2.9.9",
                 "pydantic==2.7.4"),
                "redis==5.0.7", 40)
DATA = RealImage("data", "Debian 12 + Python 3.11 base, numpy + pandas + scipy, a small application",
                 ("numpy==1.26.4", "pandas==2.2.2", "scipy==1.13.1"), "openpyxl==3.1.5", 10)
REAL = {r.family: r for r in (WEB, DATA)}

DOCKERFILE = """\
ARG BASE
FROM ${BASE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# the dependency layer (one RUN); pip's cache is a build cache mount, so it stays out of the layer
RUN --mount=type=secret,id=pipcert,required=false --mount=type=cache,target=/root/.cache/pip \\
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \\
 && python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install -q {deps}
# the application layer
COPY app /app
WORKDIR /app
CMD ["/opt/venv/bin/python", "/app/main.py"]
"""


def _app(spec: RealImage, version: str) -> dict[str, str]:
    """A small, deterministic application: main.py (which changes between versions) + modules."""
    files = {}
    for i in range(spec.app_files):
        body = "\n".join(f"def handler_{i}_{j}(request):\n    return {{'module': {i}, 'handler': {j}, "
                         f"'ok': True}}\n" for j in range(40))
        files[f"app/mod_{i:03d}.py"] = f'"""{spec.family} application module {i}."""\n\n' + body
    files["app/main.py"] = (f'"""{spec.family} application, version {version}."""\nVERSION = "{version}"\n\n'
                            "if __name__ == '__main__':\n    print(VERSION)\n")
    return files


def _variants(spec: RealImage) -> dict[str, tuple[tuple[str, ...], str]]:
    return {"1": (spec.deps, "1"), "app2": (spec.deps, "2"), "dep2": (spec.deps + (spec.added,), "1")}


def cache_key(spec: RealImage) -> str:
    h = hashlib.sha256(json.dumps([DOCKERFILE, {v: [list(d), _app(spec, a)] for v, (d, a) in _variants(spec).items()},
                                   sorted(testbed.images.PY_PACKAGES)]).encode())
    return h.hexdigest()[:16]


def build(local, spec: RealImage, cache: Path, log=print) -> list[str]:
    """The family's four tags on `local` (a testbed LocalHost): from the cached tar, else built."""
    tags = [spec.tag(v) for v in ("base", *_variants(spec))]
    if all(local.has_image(t) for t in tags):
        return tags
    tar = cache / f"real-{spec.family}-{cache_key(spec)}.tar"
    if tar.exists():
        local.docker("load", "-q", "-i", str(tar), timeout=900)
        return tags
    t0 = time.monotonic()
    base = testbed.build_python_base(local)
    local.docker("tag", base, spec.tag("base"))
    secret = ["--secret", f"id=pipcert,src={HOST_CA}"] if os.path.exists(HOST_CA) else []
    for v, (deps, app) in _variants(spec).items():
        ctx = Path(tempfile.mkdtemp(prefix=f"bench-{spec.family}-"))
        try:
            (ctx / "Dockerfile").write_text(DOCKERFILE.replace("{deps}", " ".join(deps)))
            for rel, body in _app(spec, app).items():
                (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
                (ctx / rel).write_text(body)
                os.utime(ctx / rel, (1_600_000_000, 1_600_000_000))  # same bytes, same layer
            local.docker("build", "-q", "--network", "host", *secret, "--build-arg", f"BASE={spec.tag('base')}",
                         "-t", spec.tag(v), str(ctx), timeout=1800)
        finally:
            shutil.rmtree(ctx, ignore_errors=True)
    log(f"real images: built {', '.join(tags)} in {time.monotonic() - t0:.0f}s")
    cache.mkdir(parents=True, exist_ok=True)
    part = tar.with_suffix(".part")
    local.docker("save", "-o", str(part), *tags, timeout=900)
    part.rename(tar)
    return tags


_STATS: dict[str, dict] = {}


def layer_stats(local, digest: str) -> dict:
    """{"uncompressed": bytes of the layer's tar, "files": regular files, "entries": all tar entries}
    of a layer blob of `local`'s containerd content store (gzip or plain tar)."""
    if digest in _STATS:
        return _STATS[digest]
    algo, _, hexd = digest.partition(":")
    path = Path(local.content_root) / "blobs" / algo / hexd
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    files = entries = 0
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        counter = _Counting(f)
        with tarfile.open(fileobj=counter, mode="r|") as t:
            for m in t:
                entries += 1
                files += m.isfile()
        while counter.read(1 << 20):
            pass
    _STATS[digest] = {"uncompressed": counter.n, "files": files, "entries": entries}
    return _STATS[digest]


class _Counting:
    def __init__(self, f) -> None:
        self.f, self.n = f, 0

    def read(self, size: int = -1) -> bytes:
        b = self.f.read(size)
        self.n += len(b)
        return b
