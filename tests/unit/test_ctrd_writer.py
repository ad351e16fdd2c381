"""The content writer's pure parts: the pre-encoded WRITE message, the whole-blob check, and the
typed meaning of containerd's UNAVAILABLE status."""
from __future__ import annotations

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from ctrd import Containerd, errors
from ctrd.writer import PreEncodedCodec, Writer, encode_write
from proto import content_pb2


@pytest.mark.parametrize("sizes", [[1], [5, 7, 1], [200, 0, 300], [1 << 20]])
@pytest.mark.parametrize("total,expected", [(0, ""), (1 << 40, "sha256:" + "a" * 64)])
def test_encode_write_is_the_message_protobuf_would_send(sizes, total, expected):
    parts = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    wire = encode_write("pussh-upload-abc", 12345678901, [memoryview(p) for p in parts], sum(sizes),
                        total=total, expected=expected)
    msg = content_pb2.WriteContentRequest(action=content_pb2.WRITE, ref="pussh-upload-abc", offset=12345678901,
                                          total=total, expected=expected, data=b"".join(parts))
    assert wire == msg.SerializeToString()


async def test_own_channels_pass_pre_encoded_messages_through():
    # (in a running loop, as the client is always made: grpclib's Channel asks for the current loop,
    # which Python 3.11.2 has none of after an earlier test's asyncio.run)
    c = Containerd("/nonexistent.sock", "ns")
    try:
        assert c.pre_encodes
        assert PreEncodedCodec().encode(b"raw", content_pb2.WriteContentRequest) == b"raw"
    finally:
        c.close()


@pytest.mark.parametrize("offset,digest,want", [
    (10, "sha256:x", True), (10, "sha256:y", False), (9, "sha256:x", False), (0, "", False), (20, "sha256:x", False)])
def test_holds_only_the_whole_expected_blob(offset, digest, want):
    w = Writer(None, "ref")  # type: ignore[arg-type]
    w.offset, w.digest = offset, digest
    assert w.holds("sha256:x", 10) is want
    w.rewind()
    assert w.offset == 0


def test_unavailable_status_is_locked_only_where_the_caller_says():
    with pytest.raises(errors.Locked):
        with errors.mapped(unavailable=errors.Locked):
            raise GRPCError(Status.UNAVAILABLE, "ref x locked")
    with pytest.raises(errors.Unavailable) as err:
        with errors.mapped():
            raise GRPCError(Status.UNAVAILABLE, "ref x locked")
    assert type(err.value) is errors.Unavailable
    with pytest.raises(errors.Unavailable) as err:  # a socket that fails is not a lock
        with errors.mapped(unavailable=errors.Locked):
            raise ConnectionRefusedError("no")
    assert type(err.value) is errors.Unavailable
