"""Reference normalization, digests, manifest parsing and GC labels."""
import json

import pytest

from ctrd.labels import gc_refs
from oci import digest as D
from oci import manifest as M
from oci import mediatypes as MT
from oci.reference import InvalidReference, parse, split_domain


@pytest.mark.parametrize(
    "ref,name,familiar",
    [
        ("myapp", "docker.io/library/myapp:latest", "myapp:latest"),
        ("myapp:1.2", "docker.io/library/myapp:1.2", "myapp:1.2"),
        ("me/app:1", "docker.io/me/app:1", "me/app:1"),
        ("ghcr.io/x/y:2", "ghcr.io/x/y:2", "ghcr.io/x/y:2"),
        ("localhost:5000/a/b", "localhost:5000/a/b:latest", "localhost:5000/a/b:latest"),
        ("localhost/app:v", "localhost/app:v", "localhost/app:v"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1", "busybox:1"),
        ("a@sha256:" + "a" * 64, "docker.io/library/a@sha256:" + "a" * 64, "a@sha256:" + "a" * 64),
    ],
)
def test_reference_normalization(ref, name, familiar):
    r = parse(ref)
    assert r.name == name
    assert r.familiar == familiar


@pytest.mark.parametrize("bad", ["", "MyApp", "app:", "app:-x", "a//b", "app@sha256:zz", ":tag", "a b", "app;rm", "-app"])
def test_invalid_references(bad):
    with pytest.raises(InvalidReference):
        parse(bad)


def test_split_domain():
    assert split_domain("library/x") == ("docker.io", "library/x")
    assert split_domain("x") == ("docker.io", "library/x")
    assert split_domain("quay.io/x") == ("quay.io", "x")


def test_digest_validation():
    good = "sha256:" + "0" * 64
    assert D.validate(good) == good
    for bad in ["sha256:" + "0" * 63, "sha256:" + "G" * 64, "sha256", "", "sha256:" + "A" * 64]:
        with pytest.raises(D.InvalidDigest):
            D.validate(bad)
    with pytest.raises(D.UnsupportedDigest):
        D.validate("md5:" + "0" * 32)
    assert D.of(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_manifest_parse_and_gc_labels():
    m = {
        "schemaVersion": 2, "mediaType": MT.OCI_MANIFEST,
        "config": {"mediaType": MT.OCI_CONFIG, "digest": "sha256:" + "1" * 64, "size": 2},
        "layers": [{"mediaType": MT.OCI_LAYER_GZIP, "digest": "sha256:" + "2" * 64, "size": 3}],
    }
    p = M.parse(json.dumps(m).encode())
    assert not p.is_index and [c.digest for c in p.children()] == ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
    assert gc_refs(m) == {
        "containerd.io/gc.ref.content.config": "sha256:" + "1" * 64,
        "containerd.io/gc.ref.content.l.0": "sha256:" + "2" * 64,
    }
    idx = {"schemaVersion": 2, "mediaType": MT.OCI_INDEX, "manifests": [
        {"mediaType": MT.OCI_MANIFEST, "digest": "sha256:" + "3" * 64, "size": 5,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}
    pi = M.parse(json.dumps(idx).encode())
    assert pi.is_index and pi.manifests[0].platform == M.Platform("linux", "arm64", "v8")
    assert gc_refs(idx) == {"containerd.io/gc.ref.content.m.0": "sha256:" + "3" * 64}


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"schemaVersion": 1}',
                                  b'{"schemaVersion": 2, "mediaType": "text/plain"}',
                                  b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'])
def test_manifest_parse_rejects(body):
    with pytest.raises(M.InvalidManifest):
        M.parse(body)


def test_platform_parsing():
    assert M.parse_platform("linux/x86_64") == M.Platform("linux", "amd64")
    assert M.Platform("linux", "arm", "v7").matches(M.Platform("linux", "arm"))
    with pytest.raises(ValueError):
        M.parse_platform("linux")


def test_top_dir_of_a_view():
    from ctrd.snapshots import Mount, top_dir
    assert top_dir([Mount("bind", "/s/1/fs", options=("ro", "rbind"))]) == "/s/1/fs"
    assert top_dir([Mount("overlay", "overlay", options=("index=off", "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs"))]) == "/s/3/fs"
    assert top_dir([Mount("overlay", "overlay", options=("ro",))]) is None
    assert top_dir([Mount("ext4", "/dev/sda1")]) is None
    assert top_dir([]) is None
