"""The sub-layer delta's pure parts: the tar chunker both sides share, the helper rebuilding a tar
from a base directory (run as the real stdlib script, in a subprocess, as on a server), the manifest
rewrite of the containerd opt-in, and the worth-it estimate."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import tarfile
import zlib

from oci import digest as D
from oci import manifest as M
from oci import mediatypes as MT
from pussh.delta import helper, when
from pussh.delta.client import SCRIPT
from pussh.delta.containerd import swap_layers
from pussh.plan import Plan


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("deps/link")
        link.type, link.linkname = tarfile.SYMTYPE, "a"
        tar.addfile(link)
    return buf.getvalue()


FILES = {
    "deps/a": os.urandom(3000),
    "deps/big": os.urandom(2 * helper.BLOCK + 777),
    "deps/empty": b"",
    "deps/" + "long-name-" * 20: os.urandom(5000),  # a pax header before it
}


def test_chunker_splits_file_data_and_loses_nothing():
    tar = make_tar(FILES)
    chunker, parts = helper.TarChunker(), []
    rnd, i = random.Random(7), 0
    while i < len(tar):
        n = rnd.randint(1, 300_000)
        parts += chunker.feed(tar[i:i + n])
        i += n
    parts += chunker.end()
    assert b"".join(p for _, p in parts) == tar
    data = [p for k, p in parts if k == "data"]
    big = FILES["deps/big"]
    assert data == [FILES["deps/a"], big[:helper.BLOCK], big[helper.BLOCK:2 * helper.BLOCK], big[2 * helper.BLOCK:],
                    FILES["deps/" + "long-name-" * 20]]


def ops(tar: bytes, index: dict[bytes, int]) -> tuple[bytes, int]:
    """The client's ops stream for `tar` (as pussh.delta.client sends it), and the bytes referenced."""
    out, shared = bytearray(), 0
    for kind, data in helper.TarChunker().feed(tar) + [("meta", b"")]:
        i = index.get(helper.chunk_digest(data)) if kind == "data" and len(data) >= helper.MIN_REF else None
        if i is None:
            out += b"L" + struct.pack(">I", len(data)) + data
        else:
            out += b"R" + struct.pack(">I", i)
            shared += len(data)
    return bytes(out + b"E"), shared


def run_helper(tmp_path, commands: bytes) -> bytes:
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], input=commands, capture_output=True,
                       timeout=60, check=True)
    assert not [d for d in os.listdir(tmp_path) if d.startswith("pussh-delta-")]  # its temp dir is gone
    return p.stdout


def test_helper_rebuilds_from_a_directory_and_checks_the_diff_id(tmp_path):
    base = tmp_path / "base"
    for name, data in FILES.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    new = dict(FILES, **{"deps/a": os.urandom(3000), "deps/added": os.urandom(4000)})
    tar = make_tar(new)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    # the listing the helper would send, learned from one run of it
    first = run_helper(tmp_path, json.dumps({"op": "base", "dir": str(base)}).encode() + b"\n")
    reply, _, listing = first.partition(b"\n")
    count = json.loads(reply)["count"]
    assert count == 5  # a, big x3, the long-named file
    index = {listing[i * helper.DIGEST:(i + 1) * helper.DIGEST]: i for i in range(count)}
    stream, shared = ops(tar, index)
    assert shared == len(FILES["deps/big"]) + 5000
    packed = zlib.compress(stream)
    frames = struct.pack(">I", len(packed)) + packed + struct.pack(">I", 0)

    def session(want: str) -> list[dict]:
        cmds = (json.dumps({"op": "base", "dir": str(base)}).encode() + b"\n"
                + json.dumps({"op": "delta", "diff_id": want, "name": "x"}).encode() + b"\n" + frames)
        out = run_helper(tmp_path, cmds)
        first, _, rest = out.partition(b"\n")
        return [json.loads(first), json.loads(rest[count * helper.DIGEST:])]
    ok = session(diff_id)
    assert ok[1] == {"ok": True, "size": len(tar)}
    bad = session("sha256:" + "0" * 64)  # what a wrong base or a corrupted chunk comes to
    assert bad[1]["ok"] is False and diff_id in bad[1]["error"]


def test_swap_layers_rewrites_the_manifest_and_the_index_above_it():
    cfg = M.Desc(MT.OCI_CONFIG, D.of(b"{}"), 2)
    old = M.Desc(MT.OCI_LAYER_GZIP, "sha256:" + "1" * 64, 100)
    keep = M.Desc(MT.OCI_LAYER_GZIP, "sha256:" + "2" * 64, 50)
    man = json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_MANIFEST, "config": cfg.to_json(),
                      "layers": [keep.to_json(), old.to_json()]}).encode()
    mdesc = M.Desc(MT.OCI_MANIFEST, D.of(man), len(man), platform=M.Platform("linux", "amd64"))
    idx = json.dumps({"schemaVersion": 2, "mediaType": MT.OCI_INDEX, "manifests": [mdesc.to_json()]}).encode()
    root = M.Desc(MT.OCI_INDEX, D.of(idx), len(idx))
    plan = Plan(root, [(mdesc, man), (root, idx)], [cfg, keep, old], [M.Platform("linux", "amd64")],
                [M.parse(man, MT.OCI_MANIFEST)])
    new = M.Desc(MT.OCI_LAYER_GZIP, "sha256:" + "3" * 64, 90)
    out = swap_layers(plan, {old.digest: new})
    (m2, body2), (r2, rbody2) = out.manifests
    assert [l.digest for l in M.parse(body2).layers] == [keep.digest, new.digest]
    assert M.parse(body2).config == cfg
    assert m2.digest == D.of(body2) != mdesc.digest and m2.platform == mdesc.platform
    assert [m.digest for m in M.parse(rbody2).manifests] == [m2.digest]
    assert out.root == r2 and r2.digest == D.of(rbody2)
    assert [b.digest for b in out.blobs] == [cfg.digest, keep.digest, new.digest]
    assert [l.digest for l in out.images[0].layers] == [keep.digest, new.digest]


def test_worth_it():
    assert when.worth_it(300 << 20, when.ASSUMED_LINK_RATE, None)
    assert not when.worth_it(1 << 20, when.ASSUMED_LINK_RATE, None)  # the helper would cost more
    assert not when.worth_it(300 << 20, 10e9, None)  # a link faster than the rebuild
    assert when.worth_it(1, 10e9, True) and not when.worth_it(300 << 20, 1e3, False)
    assert when.link_rate(10, 1.0) == when.ASSUMED_LINK_RATE and when.link_rate(10 << 20, 2.0) == 5 << 20


def test_a_delta_gives_up_on_a_base_that_shares_little():
    big = 300 << 20
    assert when.too_little_shared(100 << 20, big, 100 << 20, 10 << 20)
    assert not when.too_little_shared(100 << 20, big, 100 << 20, 60 << 20)  # shares enough
    assert not when.too_little_shared(50 << 20, big, 50 << 20, 0)  # new files may come first
    assert not when.too_little_shared(10 << 20, 10 << 20, 10 << 20, 0)  # a small layer goes to its end


def block_gzip(data: bytes, threads: int, feed: int) -> bytes:
    parts: list[bytes] = []
    g = helper.BlockGzip(parts.append, threads)
    for i in range(0, len(data), feed):
        g.write(data[i:i + feed])
    g.close()
    return b"".join(parts)


def test_block_gzip_is_gzip_and_the_same_however_fed():
    text = b"".join(b"line %d of a text file that compresses\n" % i for i in range(120_000))
    piece = helper.BlockGzip.PIECE
    data = text[:piece + 5000] + os.urandom(2 * piece) + text[:3 * piece]
    blobs = {block_gzip(data, threads, feed) for threads, feed in ((1, 777_777), (2, piece), (4, 4 << 20))}
    assert len(blobs) == 1
    [blob] = blobs
    assert zlib.decompress(blob, 31) == data
    # the random middle is stored, the text deflated: the blob is about the random part's size
    assert 2 * piece < len(blob) < 2 * piece + len(text[:4 * piece]) // 5
    for n in (0, 1, piece, piece + 1):  # the edges of the last piece
        assert zlib.decompress(block_gzip(text[:n], 2, 100_000), 31) == text[:n]


def test_the_classic_client_and_the_helper_make_one_gzip_blob(tmp_path):
    """A classic-store client's gzip layer (source_classic) is what the helper's rebuild stores."""
    from pussh.source_classic import _Compressor
    tar = make_tar(FILES)
    comp = _Compressor(zstd=False)
    local = b"".join(comp.compress(tar[i:i + 4096]) for i in range(0, len(tar), 4096)) + comp.flush()
    sink = helper.Sink(str(tmp_path / "rebuilt"), gzip=True)
    with sink:
        for i in range(0, len(tar), 300_000):
            sink.write(tar[i:i + 300_000])
    assert (tmp_path / "rebuilt").read_bytes() == local
    assert sink.out_digest.hexdigest() == hashlib.sha256(local).hexdigest()
