"""pussh end to end against the real two-host test bed: fresh push, no-op push, one changed layer;
containerd and classic stores on the server; multi-platform indexes; non-root and sudo users;
two servers at once."""
from __future__ import annotations

import asyncio
import json

import pytest

from ctrd import Containerd, Descriptor
from oci import digest as D
from oci import mediatypes as MT
from pussh_support import build_app_image, build_registry_image, pussh

pytestmark = pytest.mark.e2e
SIZES = [6, 4, 2]  # MiB: busybox + 3 data layers = a 4-layer image


@pytest.fixture(scope="module")
def local(local_host):
    build_registry_image(local_host)
    build_app_image(local_host, "app:1", SIZES, seed="app", last_seed="v1")
    build_app_image(local_host, "app:2", SIZES, seed="app", last_seed="v2")
    return local_host


@pytest.fixture
def remote(remote_host):
    return remote_host


@pytest.fixture
def remote_classic(remote_host_classic):
    return remote_host_classic


def push_json(local, remote, image, *extra, target=None):
    r = pussh(local, "--json", "-F", remote.ssh_config, "--registry-image", "pussh-registry:test", *extra,
              image, target or remote.alias)
    assert r.returncode == 0, r.stdout + r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(results) == 1 and results[0]["ok"], results
    return results[0]


def layers_of(host, image) -> list[str]:
    return host.diff_ids(image)


def run_output(host, image) -> str:
    """The container's output. Not `docker run --rm`: dockerd 26 now and then drops the output of a
    container that exits at once, so wait for it and read its log."""
    cid = host.docker("run", "-d", "--pull", "never", "--network", "none", image).stdout.strip()
    try:
        assert host.docker("wait", cid).stdout.strip() == "0"
        return host.docker("logs", cid).stdout.strip()
    finally:
        host.docker("rm", "-f", cid, check=False)


def no_registry_left(remote) -> None:
    assert remote.docker("ps", "-aq", "--filter", "label=pussh.registry=1").stdout.strip() == ""


NOTHING = 256 << 10  # bytes on the wire for a push that sends no blob (SSH session, commands, HEADs)


def on_wire(server, fn):
    """(fn(), the bytes it put on the wire from here to the server: its veth's counter)."""
    t0 = server.link_bytes()[0]
    out = fn()
    return out, server.link_bytes()[0] - t0


def layer_digests(local, image) -> dict[str, int]:
    """Compressed layer digest -> size of the image's (local platform's) manifest."""
    async def read():
        async with Containerd(local.containerd_socket, "moby") as c:
            img = await c.images.get(f"docker.io/library/{image}")
            body = json.loads(await c.content.read_all(img.target.digest))
            if "manifests" in body:
                m = next(m for m in body["manifests"] if m.get("platform", {}).get("architecture") == "amd64")
                body = json.loads(await c.content.read_all(m["digest"]))
            return {l["digest"]: l["size"] for l in body["layers"]}
    return asyncio.run(read())


@pytest.mark.parametrize("store", ["containerd", "classic"])
def test_push_fresh_then_nothing_then_one_layer(local, remote, remote_classic, store):
    server = remote if store == "containerd" else remote_classic
    want = run_output(local, "app:1")
    layers1, layers2 = layer_digests(local, "app:1"), layer_digests(local, "app:2")
    changed = set(layers2) - set(layers1)
    assert len(layers1) == 4 and len(changed) == 1

    first = push_json(local, server, "app:1")
    assert set(layers1) <= set(first["sent"])
    assert run_output(server, "app:1") == want
    assert layers_of(server, "app:1") == layers_of(local, "app:1")
    no_registry_left(server)

    again, wire = on_wire(server, lambda: push_json(local, server, "app:1"))
    assert not set(again["sent"]) & set(layers1), "a second push sent layer bytes"
    assert again["bytes_skipped"] >= sum(layers1.values())
    # nothing sent, on the wire too: a fraction of the smallest layer
    assert wire <= NOTHING < min(layers1.values()), (wire, layers1)
    no_registry_left(server)

    second, wire = on_wire(server, lambda: push_json(local, server, "app:2"))
    assert set(second["sent"]) & (set(layers1) | set(layers2)) == changed
    # exactly the changed layer crossed: its size plus framing, less than it and any other layer
    size = sum(layers2[d] for d in changed)
    assert size <= wire <= size * 1.05 + (256 << 10) < size + min(layers1.values()), (wire, size, layers1)
    assert run_output(server, "app:2") == run_output(local, "app:2") != want
    no_registry_left(server)
    if store == "classic":
        # Nothing left behind in the server's containerd: Docker's own store has the image.
        assert "app" not in server.run("ctr", "-n", "moby", "images", "ls", "-q").stdout


def test_non_root_docker_group_user(local, remote):
    user = remote.add_user("deployer", docker_group=True)
    build_app_image(local, "app:user", [1], seed="user")
    res = push_json(local, remote, "app:user", target=user.alias)
    assert res["blobs_sent"] >= 2
    assert run_output(remote, "app:user") == run_output(local, "app:user")
    no_registry_left(remote)


def test_user_needing_sudo(local, remote):
    user = remote.add_user("sudoer", sudo_nopasswd=True)
    build_app_image(local, "app:sudo", [1], seed="sudo")
    r = pussh(local, "-v", "-F", remote.ssh_config, "--registry-image", "pussh-registry:test", "app:sudo", user.alias)
    assert r.returncode == 0, r.stderr
    assert "sudo -n" in r.stderr  # the verbose line names the docker command it settled on
    assert run_output(remote, "app:sudo") == run_output(local, "app:sudo")
    no_registry_left(remote)


def test_two_servers_at_once(local, remote, remote_classic):
    build_app_image(local, "app:both", [2, 1], seed="both")
    r = pussh(local, "--json", "-F", remote.ssh_config, "-F", remote_classic.ssh_config,
              "--registry-image", "pussh-registry:test", "app:both", remote.alias, remote_classic.alias)
    assert r.returncode == 0, r.stderr
    results = {x["host"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert set(results) == {remote.alias, remote_classic.alias}
    assert all(x["ok"] for x in results.values())
    want = run_output(local, "app:both")
    assert run_output(remote, "app:both") == want == run_output(remote_classic, "app:both")


def make_multiplatform(local, name: str) -> tuple[str, str]:
    """An index of app:1's amd64 manifest and an "arm64" twin (same layers, its own config)."""
    async def make():
        async with Containerd(local.containerd_socket, "moby") as c:
            img = await c.images.get("docker.io/library/app:1")
            body = json.loads(await c.content.read_all(img.target.digest))
            amd = next(m for m in body["manifests"] if m.get("platform", {}).get("architecture") == "amd64")
            manifest = json.loads(await c.content.read_all(amd["digest"]))
            config = json.loads(await c.content.read_all(manifest["config"]["digest"]))
            config["architecture"] = "arm64"
            cfg = json.dumps(config).encode()
            await write(c, cfg)
            manifest["config"] = {**manifest["config"], "digest": D.of(cfg), "size": len(cfg)}
            mbody = json.dumps(manifest).encode()
            await write(c, mbody, {"containerd.io/gc.ref.content.config": D.of(cfg)})
            arm = {"mediaType": amd["mediaType"], "digest": D.of(mbody), "size": len(mbody),
                   "platform": {"os": "linux", "architecture": "arm64"}}
            index = json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_INDEX,
                                "manifests": [{k: amd[k] for k in ("mediaType", "digest", "size", "platform")}, arm]}).encode()
            await write(c, index, {"containerd.io/gc.ref.content.m.0": amd["digest"],
                                   "containerd.io/gc.ref.content.m.1": arm["digest"]})
            await c.images.put(f"docker.io/library/{name}", Descriptor(MT.OCI_INDEX, D.of(index), len(index)))
            return amd["digest"], arm["digest"]

    async def write(c, data, labels=None):
        async def src(offset):
            yield data[offset:]
        await c.content.write_blob(f"test-{D.of(data)}", src, expected=D.of(data), total=len(data), labels=labels)
    return asyncio.run(make())


def test_multiplatform_index_with_platform(local, remote):
    amd, arm = make_multiplatform(local, "multi:1")
    res = push_json(local, remote, "multi:1", "--platform", "linux/arm64")
    assert res["platforms"] == ["linux/arm64"]
    index = json.loads(remote.run("ctr", "-n", "moby", "content", "get", res["digest"]).stdout)
    assert [m["digest"] for m in index["manifests"]] == [arm]
    inspect = json.loads(remote.docker("image", "inspect", "multi:1").stdout)[0]
    assert inspect["Architecture"] == "arm64"
    both = push_json(local, remote, "multi:1", "--platform", "linux/arm64", "--platform", "linux/amd64")
    assert sorted(both["platforms"]) == ["linux/amd64", "linux/arm64"]
    assert not both["sent"] or all(d not in layer_digests(local, "app:1") for d in both["sent"])
    no_registry_left(remote)


def test_ssh_url_key_flag_and_proxyjump(local, remote, tmp_path):
    build_app_image(local, "app:url", [1], seed="url")
    # ssh://user@address:port, the key from -i, a config that only says where known_hosts is.
    cfg = tmp_path / "only_known_hosts"
    cfg.write_text(f"Host *\n  UserKnownHostsFile {remote.known_hosts}\n  GlobalKnownHostsFile /dev/null\n")
    r = pussh(local, "--json", "-F", str(cfg), "-i", remote.ssh_key, "--registry-image", "pussh-registry:test",
              "app:url", f"ssh://root@{remote.address}:22")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["host"] == f"root@{remote.address}:22"
    assert run_output(remote, "app:url") == run_output(local, "app:url")

    # An alias reached through ProxyJump (the remote jumping to itself), from ~/.ssh/config-style settings.
    build_app_image(local, "app:jump", [1], seed="jump")
    common = (f"  User root\n  IdentityFile {remote.ssh_key}\n  IdentitiesOnly yes\n"
              f"  UserKnownHostsFile {remote.known_hosts}\n  GlobalKnownHostsFile /dev/null\n  HostKeyAlias {remote.alias}\n")
    cfg = tmp_path / "jump"
    cfg.write_text(f"Host jumphost\n  HostName {remote.address}\n{common}"
                   f"Host behind\n  HostName {remote.address}\n  ProxyJump jumphost\n{common}")
    res = push_json(local, remote, "app:jump", "-F", str(cfg), target="behind")
    assert res["host"] == "behind"
    assert run_output(remote, "app:jump") == run_output(local, "app:jump")
    no_registry_left(remote)
