"""A local Docker with the classic image store: layers are exported, compressed once (BlockGzip for
a containerd store, zstd for a classic one) into the cache by diffID, and a repeated push exports
and compresses nothing."""
from __future__ import annotations

import json
import re

import pytest

from pussh_support import build_app_image, build_registry_image, pussh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_classic(local_host_classic):
    h = local_host_classic
    build_registry_image(h)
    build_app_image(h, "capp:1", [4, 3, 2], seed="capp", last_seed="v1")
    build_app_image(h, "capp:2", [4, 3, 2], seed="capp", last_seed="v2")
    return h


def run_output(host, image) -> str:
    cid = host.docker("run", "-d", "--pull", "never", "--network", "none", image).stdout.strip()
    try:
        assert host.docker("wait", cid).stdout.strip() == "0"
        return host.docker("logs", cid).stdout.strip()
    finally:
        host.docker("rm", "-f", cid, check=False)


def push(local, remote, image, cache):
    r = pussh(local, "-v", "--json", "-F", remote.ssh_config, "--registry-image", "pussh-registry:test", image,
              remote.alias, env={"PUSSH_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)
    compressed = int(re.search(r"\((\d+) layers compressed\)", r.stderr).group(1))
    return result, compressed


@pytest.mark.parametrize("store", ["containerd", "classic"])
def test_classic_client(local_classic, remote_host, remote_host_classic, tmp_path, store):
    cache = tmp_path / "cache"
    remote = remote_host if store == "containerd" else remote_host_classic
    first, compressed = push(local_classic, remote, "capp:1", cache)
    assert compressed == 4  # busybox + 3 data layers
    assert run_output(remote, "capp:1") == run_output(local_classic, "capp:1")
    assert remote.diff_ids("capp:1") == local_classic.diff_ids("capp:1")
    layers = set(first["sent"])

    again, compressed = push(local_classic, remote, "capp:1", cache)
    assert compressed == 0
    assert not set(again["sent"]) & layers

    second, compressed = push(local_classic, remote, "capp:2", cache)
    assert compressed == 1  # only the changed layer
    new_layers = [d for d in second["sent"] if d not in layers]
    assert second["bytes_sent"] < first["bytes_sent"] / 2
    assert len([d for d in second["sent"] if d in layers]) == 0
    assert len(new_layers) <= 2  # the changed layer, and the config
    assert run_output(remote, "capp:2") == run_output(local_classic, "capp:2")
    assert remote.docker("ps", "-aq", "--filter", "label=pussh.registry=1").stdout.strip() == ""
