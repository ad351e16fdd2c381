"""The server side of a sub-layer delta, and the chunking both sides share.

Stdlib only: its source is sent over SSH and run with the server's `python3 -c` (Debian servers and
the test bed have it; zstd does not exist there, so the wire is zlib). The client imports this same
module, so the chunk rules (BLOCK, DIGEST, the tar walk) are spelled once.

Chunks are a layer's *file contents*, not byte-level CDC windows: each regular file's data in
BLOCK-sized pieces from the file's start, sha256 each. Layers change by files added or changed, so
file-aligned chunks find what a CDC would, and they can be hashed at hashlib's speed in stdlib
Python (a pure-Python FastCDC manages a few MB/s, too slow for a 300 MB layer). Tar headers,
padding and anything else travel as literal bytes, compressed. Because chunks are content, any
source of the base's files will do: a gzip layer blob (containerd's content store) or an unpacked
layer directory (Docker's overlay2 diff); the rebuilt tar is checked against the diffID, so a
source that does not match only costs the fallback to the full blob.

Protocol (stdin -> helper, replies on stdout): a JSON line per command, binary after it.
  {"op": "base", "dir": PATH | "blob": PATH | "chain": HEX, "docker_root": PATH}
      -> {"ok", "count", "bytes"} + count * DIGEST bytes (the base's chunk digests, in index order)
  {"op": "delta", "diff_id": "sha256:..", "name": NAME} + frames (u32 length + zlib bytes; 0 ends)
      of ops: b"L" u32 n + n literal bytes | b"R" u32 index (a base chunk) | b"E" (end)
      -> {"ok", "size"} once the rebuilt tar matched diff_id (kept as NAME), else {"ok": false, "error"}
      ("gzip": true: NAME is kept gzipped by BlockGzip, as a classic-store client gzips a layer, and
      the reply has its "digest" too)
  {"op": "store", "name": NAME, "into": DIR}
      -> the gzipped NAME moved into DIR as its digest's hex (containerd's blobs/sha256):
      {"ok", "digest", "size"}
  {"op": "load", "argv": [docker, ...], "files": {MEMBER: NAME}} + a docker-save tar until EOF:
      runs `argv load -q`, passing the tar through and putting the rebuilt file NAME where a member
      MEMBER's header (no data follows it) stands; docker's output and exit status become the helper's.
Every rebuilt file lives in a private temporary directory removed when the helper ends (EOF, a
signal, an error): an interrupted push leaves nothing behind, and nothing is stored unverified.
"""
import concurrent.futures
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import zlib

BLOCK = 1 << 20  # a file's data is chunked in blocks of this size from its first byte
DIGEST = 16  # bytes of sha256 per chunk on the wire (a wrong match is caught by the diffID check)
MIN_REF = 256  # shorter chunks go as literal bytes: a reference would save nothing
GZIP_LEVEL = 1  # BlockGzip's: 3x level 6's speed for ~10 % more bytes (a layer of libraries and text)
TAR_BLOCK = 512
INFLATE_PIECE = 4 << 20  # most bytes one inflate call may return (memory stays bounded)
REGULAR = (b"0", b"\0", b"7")


class TarChunker:
    """Splits an uncompressed tar stream, fed in any pieces, into ("meta", bytes) and ("data",
    bytes) parts: data parts are whole chunks of a regular file, meta everything else. A stream
    that stops looking like a tar is passed on as meta from there on (it costs bytes, not
    correctness)."""

    def __init__(self):
        self._buf = bytearray()
        self._state = "header"
        self._left = 0  # bytes left in the current member's data (or its padding)
        self._pad = 0
        self._pax = None  # collecting a pax header's records
        self._pax_size = None  # the size a pax header gave the next member
        self._chunk = bytearray()

    def feed(self, data):
        self._buf += data
        out = []
        while self._step(out):
            pass
        return out

    def end(self):
        out = []
        if self._chunk:
            out.append(("data", bytes(self._chunk)))
            self._chunk = bytearray()
        if self._buf:
            out.append(("meta", bytes(self._buf)))
            self._buf = bytearray()
        return out

    def _take(self, n):
        piece = bytes(self._buf[:n])
        del self._buf[:n]
        return piece

    def _step(self, out):
        buf = self._buf
        if not buf:
            return False
        if self._state == "tail":
            out.append(("meta", self._take(len(buf))))
            return False
        if self._state == "header":
            if len(buf) < TAR_BLOCK:
                return False
            header = self._take(TAR_BLOCK)
            out.append(("meta", header))
            size = _header_size(header)
            if size is None:  # the end blocks, or not a tar header: the rest goes as it is
                self._state = "tail"
                return True
            kind = header[156:157]
            if self._pax_size is not None and kind not in (b"x", b"g"):
                size, self._pax_size = self._pax_size, None
            self._pad = -size % TAR_BLOCK
            self._left = size
            if kind in REGULAR and size:
                self._state = "data"
            elif kind == b"x":
                self._pax = bytearray()
                self._state = "pax"
            else:
                self._state = "skip"
            if not size:
                self._state = "pad"
            return True
        if self._state == "data":
            room = BLOCK - len(self._chunk)
            n = min(self._left, room, len(buf))
            self._chunk += self._take(n)
            self._left -= n
            if len(self._chunk) == BLOCK or not self._left:
                out.append(("data", bytes(self._chunk)))
                self._chunk = bytearray()
            if not self._left:
                self._state = "pad"
            return True
        if self._state in ("skip", "pax"):
            n = min(self._left, len(buf))
            piece = self._take(n)
            out.append(("meta", piece))
            if self._state == "pax":
                self._pax += piece
            self._left -= n
            if not self._left:
                if self._state == "pax":
                    self._pax_size = _pax_size(bytes(self._pax))
                    self._pax = None
                self._state = "pad"
            return True
        # "pad": the zeros after a member's data
        n = min(self._pad, len(buf))
        if n:
            out.append(("meta", self._take(n)))
        self._pad -= n
        if not self._pad:
            self._state = "header"
        return True


def _header_size(header):
    """The member size of a ustar/gnu header, or None for a zero block or a bad checksum."""
    if not header.strip(b"\0"):
        return None
    try:
        want = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    if want != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        return None
    field = header[124:136]
    if field[0] & 0x80:  # base-256
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None


def _pax_size(records):
    size = None
    for line in records.split(b"\n"):
        _, _, kv = line.partition(b" ")
        key, _, value = kv.partition(b"=")
        if key == b"size":
            try:
                size = int(value)
            except ValueError:
                pass
    return size


def chunk_digest(data):
    return hashlib.sha256(data).digest()[:DIGEST]


# -- the helper ------------------------------------------------------------------------------------

class Failed(Exception):
    """A command that cannot be done: its reply says why, the helper goes on."""


class Base:
    """The base layer's chunks: digest -> where its bytes are (a file, an offset, a length)."""

    def __init__(self):
        self.order = []  # digests in index order
        self.where = {}
        self.total = 0
        self._fds = {}

    def add(self, digest, path, offset, length):
        if digest not in self.where:
            self.where[digest] = (path, offset, length)
            self.order.append(digest)
            self.total += length

    def read(self, index):
        path, offset, length = self.where[self.order[index]]
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= 64:
                self.close()
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise Failed(f"the base's {path} is shorter than when it was read")
        return data

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def index_dir(root):
    """Every regular file under an unpacked layer, chunked as TarChunker chunks a tar's files."""
    base = Base()
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or not st.st_size:
                    continue
                with open(path, "rb") as f:
                    offset = 0
                    while True:
                        data = f.read(BLOCK)
                        if not data:
                            break
                        if len(data) >= MIN_REF:
                            base.add(chunk_digest(data), path, offset, len(data))
                        offset += len(data)
            except OSError:
                continue  # unreadable: its chunks are simply not offered
    return base


def index_blob(path, tmp):
    """A compressed layer blob: unpacked once into `tmp` (the rebuild reads its chunks there)."""
    if not os.path.exists(path):
        raise Failed(f"no blob {path}")
    base = Base()
    out = os.path.join(tmp, "base-" + os.path.basename(path))
    chunker = TarChunker()
    offset = 0
    inflate = zlib.decompressobj(47)  # gzip or zlib header, told apart by zlib

    def parts(pieces):
        nonlocal offset
        for kind, data in pieces:
            if kind == "data" and len(data) >= MIN_REF:
                base.add(chunk_digest(data), out, offset, len(data))
            offset += len(data)
    with open(path, "rb") as f, open(out, "wb") as w:
        magic = f.read(4)
        if magic[:2] != b"\x1f\x8b":
            raise Failed("the base blob is not gzip (zstd layers are not read here)")
        f.seek(0)
        while True:
            raw = f.read(1 << 20)
            if not raw:
                break
            while raw:
                try:
                    data = inflate.decompress(raw, INFLATE_PIECE)
                except zlib.error as err:
                    raise Failed(f"the base blob does not inflate: {err}") from None
                w.write(data)
                parts(chunker.feed(data))
                if inflate.eof:
                    raw = inflate.unused_data
                    inflate = zlib.decompressobj(47)  # a further gzip member
                else:
                    raw = inflate.unconsumed_tail
        parts(chunker.end())
    return base


def layer_dir(docker_root, chain_hex):
    """Docker's classic store: the unpacked directory of the layer whose chain ID is chain_hex."""
    image_dir = os.path.join(docker_root, "image")
    for driver in sorted(os.listdir(image_dir)) if os.path.isdir(image_dir) else []:
        try:
            with open(os.path.join(image_dir, driver, "layerdb", "sha256", chain_hex, "cache-id")) as f:
                cache = f.read().strip()
        except OSError:
            continue
        for d in (os.path.join(docker_root, driver, cache, "diff"), os.path.join(docker_root, driver, "dir", cache),
                  os.path.join(docker_root, driver, cache)):
            if os.path.isdir(d):
                return d
    raise Failed(f"the server has no unpacked layer for chain sha256:{chain_hex}")


class BlockGzip:
    """pussh's gzip, deterministic and parallel (pigz's scheme): the stream is cut into PIECE-sized
    pieces at fixed offsets, each deflated on its own thread, primed with the previous piece's last
    32 KiB and ended on a byte boundary (a sync flush); a piece that samples as incompressible is
    stored. The same bytes give the same blob however they are fed and on however many threads, so
    a server can rebuild, byte for byte, a layer blob a classic-store client made (both use this).
    write() hands out the compressed bytes in order, through `out`."""
    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS unknown
    PIECE = 1 << 20  # (with the level and the rules below: the output format, fixed)
    WINDOW = 32 << 10
    SAMPLE = 16 << 10  # four samples of a piece compressing to more than STORE_ABOVE of their size:
    STORE_ABOVE = 0.95  # the piece is stored (random data deflates at a fifth of a stored copy's speed)

    def __init__(self, out, threads=None):
        self._out = out
        threads = max(1, min(4, threads or os.cpu_count() or 1))
        self._pool = concurrent.futures.ThreadPoolExecutor(threads)
        self._ahead = 2 * threads  # pieces in flight: memory stays a few MiB
        self._pending = []  # futures of compressed pieces, in order
        self._buf = bytearray()
        self._tail = b""  # the last WINDOW bytes of the piece before
        self._crc, self._size = 0, 0
        out(self.HEADER)

    def write(self, data):
        self._buf += data
        while len(self._buf) > self.PIECE:  # a piece goes once more follows: the last is final
            self._piece(bytes(self._buf[:self.PIECE]), False)
            del self._buf[:self.PIECE]

    def close(self):
        """The last piece and the trailer; the threads end."""
        try:
            self._piece(bytes(self._buf), True)
            self._buf = bytearray()
            self._drain(0)
            self._out(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        finally:
            self.abort()

    def abort(self):
        self._pool.shutdown(cancel_futures=True)

    def _piece(self, data, last):
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._pending.append(self._pool.submit(_deflate_piece, data, self._tail, last))
        self._tail = data[-self.WINDOW:] if len(data) >= self.WINDOW else (self._tail + data)[-self.WINDOW:]
        self._drain(self._ahead)

    def _drain(self, keep):
        while len(self._pending) > keep:
            self._out(self._pending.pop(0).result())


def _deflate_piece(data, tail, last):
    flush = zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
    if _incompressible(data):
        c = zlib.compressobj(0, zlib.DEFLATED, -15)
    elif tail:
        c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, tail)
    else:
        c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(flush)


def _incompressible(data):
    n = BlockGzip.SAMPLE
    if len(data) < 4 * n:
        return False
    packed = 0
    for i in range(4):
        at = i * (len(data) - n) // 3
        c = zlib.compressobj(1, zlib.DEFLATED, -15)
        packed += len(c.compress(data[at:at + n]) + c.flush())
    return packed > BlockGzip.STORE_ABOVE * 4 * n


class Sink:
    """Where a rebuilt layer goes: a file, hashed as it is written (with `gzip`, what is written is
    the tar through BlockGzip: zlib and hashlib let go of the GIL, so its threads overlap the rebuild)."""

    def __init__(self, path, gzip):
        self.gzip = gzip
        self.raw_digest, self.raw_size = hashlib.sha256(), 0
        self.out_digest, self.out_size = hashlib.sha256(), 0
        self._f = open(path, "wb")
        self._gz = BlockGzip(self._out) if gzip else None

    def write(self, data):
        self.raw_digest.update(data)
        self.raw_size += len(data)
        if self._gz is None:
            self._f.write(data)
        else:
            self._gz.write(data)

    def _out(self, data):
        self.out_digest.update(data)
        self.out_size += len(data)
        self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if self._gz is not None and exc[0] is not None:
                self._gz.abort()
            elif self._gz is not None:
                self._gz.close()
        except OSError as err:
            raise Failed(f"writing the rebuilt layer failed: {err}") from None
        finally:
            self._f.close()


class Helper:
    def __init__(self, tmp, inp, out):
        self.tmp, self.inp, self.out = tmp, inp, out
        self.base = None
        self.stored = {}  # name -> (digest, size) of layers rebuilt gzipped, until stored

    def reply(self, obj, payload=b""):
        self.out.write(json.dumps(obj).encode() + b"\n" + payload)
        self.out.flush()

    def serve(self):
        while True:
            line = self.inp.readline()
            if not line:
                return 0
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "load":
                return self.load(cmd)
            try:
                if op == "base":
                    self.do_base(cmd)
                elif op == "delta":
                    self.reply(dict(ok=True, **self.do_delta(cmd)))
                elif op == "store":
                    self.reply(dict(ok=True, **self.do_store(cmd)))
                else:
                    raise Failed(f"unknown op {op!r}")
            except Failed as err:
                self.reply({"ok": False, "error": str(err)})

    def do_base(self, cmd):
        if self.base is not None:
            self.base.close()
        self.base = None
        if "dir" in cmd:
            base = index_dir(cmd["dir"])
        elif "chain" in cmd:
            base = index_dir(layer_dir(cmd["docker_root"], cmd["chain"]))
        else:
            base = index_blob(cmd["blob"], self.tmp)
        self.base = base
        self.reply({"ok": True, "count": len(base.order), "bytes": base.total}, b"".join(base.order))

    def _frames(self):
        """The ops stream: frames of zlib bytes until a zero length, inflated."""
        inflate = zlib.decompressobj()
        while True:
            head = self.inp.read(4)
            if len(head) < 4:
                raise EOFError("the client went away")
            (n,) = struct.unpack(">I", head)
            if not n:
                tail = inflate.flush()
                if tail:
                    yield tail
                return
            data = self.inp.read(n)
            if len(data) < n:
                raise EOFError("the client went away")
            while data:  # bounded pieces: a frame of zeros may inflate a thousandfold
                yield inflate.decompress(data, INFLATE_PIECE)
                data = inflate.unconsumed_tail

    def do_delta(self, cmd):
        """Rebuild the layer's tar from the ops; keep it only if it hashes to the diffID. With
        "gzip", what is kept is the tar gzipped on the way (a thread compresses while the rebuild
        reads on: no second pass over the layer). The ops stream is read to its end even after a
        failure, so the next command is found."""
        name = os.path.basename(cmd["name"])
        path = os.path.join(self.tmp, name)
        error = None
        buf = bytearray()
        ended = False
        with Sink(path + ".partial", bool(cmd.get("gzip"))) as sink:
            for data in self._frames():
                buf += data
                while not ended and error is None and buf:
                    op = buf[:1]
                    if op == b"E":
                        ended = True
                        del buf[:1]
                    elif op == b"L":
                        if len(buf) < 5:
                            break
                        (n,) = struct.unpack(">I", buf[1:5])
                        if len(buf) < 5 + n:
                            break
                        sink.write(bytes(buf[5:5 + n]))
                        del buf[:5 + n]
                    elif op == b"R":
                        if len(buf) < 5:
                            break
                        (i,) = struct.unpack(">I", buf[1:5])
                        del buf[:5]
                        try:
                            if self.base is None or i >= len(self.base.order):
                                raise Failed(f"chunk {i} is not in the base")
                            sink.write(self.base.read(i))
                        except (Failed, OSError) as err:
                            error = str(err)
                            break
                    else:
                        error = f"bad op {op!r}"
                if error is not None:
                    buf.clear()  # read on to the stream's end, ignoring it
        want = cmd["diff_id"]
        got = "sha256:" + sink.raw_digest.hexdigest()
        if error is None and not ended:
            error = "the ops stream ended early"
        if error is None and got != want:
            error = f"the rebuilt layer is {got}, not {want}"
        if error is not None:
            os.unlink(path + ".partial")
            raise Failed(error)
        os.replace(path + ".partial", path)
        if not sink.gzip:
            return {"size": sink.raw_size}
        digest = "sha256:" + sink.out_digest.hexdigest()
        self.stored[name] = (digest, sink.out_size)
        return {"size": sink.raw_size, "digest": digest}

    def do_store(self, cmd):
        """A layer rebuilt with "gzip" moved into a content store's blob directory under its
        digest (a reader never sees a partial blob: the rename is the commit)."""
        name = os.path.basename(cmd["name"])
        if name not in self.stored:
            raise Failed(f"no gzipped rebuild of {name}")
        digest, size = self.stored.pop(name)
        src = os.path.join(self.tmp, name)
        final = os.path.join(cmd["into"], digest.split(":", 1)[1])
        try:
            os.chmod(src, 0o444)
            try:
                os.replace(src, final)
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
                shutil.copyfile(src, final + ".pussh-partial")
                os.replace(final + ".pussh-partial", final)
                os.unlink(src)
        except OSError as err:
            raise Failed(f"storing the rebuilt layer failed: {err}") from None
        return {"digest": digest, "size": size}

    def load(self, cmd):
        """docker load of the client's tar, the rebuilt layers put in where their headers stand."""
        files = {m: os.path.join(self.tmp, os.path.basename(n)) for m, n in cmd["files"].items()}
        proc = subprocess.Popen(list(cmd["argv"]) + ["load", "-q"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            try:
                self._splice(files, proc.stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # docker load stopped reading: its output says why
            out = proc.stdout.read()
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.out.write(out)
        self.out.flush()
        return rc

    def _splice(self, files, w):
        inp = self.inp
        while True:
            header = inp.read(TAR_BLOCK)
            if len(header) < TAR_BLOCK:
                if header:
                    w.write(header)
                return
            w.write(header)
            size = _header_size(header)
            if size is None:  # the end of the archive: the rest as it comes
                shutil.copyfileobj(inp, w, 1 << 20)
                return
            name = header[:100].split(b"\0", 1)[0].decode()
            if name in files:
                with open(files[name], "rb") as f:
                    shutil.copyfileobj(f, w, 1 << 20)
                w.write(b"\0" * (-size % TAR_BLOCK))
                os.unlink(files.pop(name))
                continue
            left = size + (-size % TAR_BLOCK)
            while left:
                data = inp.read(min(left, 1 << 20))
                if not data:
                    raise EOFError("the client went away")
                w.write(data)
                left -= len(data)


def _stop(signum, frame):
    raise SystemExit(128 + signum)


def main(argv):
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    parent = argv[1] if len(argv) > 1 and os.path.isdir(argv[1]) else None
    tmp = tempfile.mkdtemp(prefix="pussh-delta-", dir=parent)
    try:
        return Helper(tmp, sys.stdin.buffer, sys.stdout.buffer).serve()
    except (EOFError, BrokenPipeError):
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
