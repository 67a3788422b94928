"""The EVAL wire protocol between the trusted scorer (runner) and the model server (sandbox).

Fixed binary frames over the server's stdin (requests) and stdout (answers); nothing else
crosses. One place for the format, used by both ends:

    scorer -> server   REQUEST  b"WIN1" + u32 batch + u32 context + batch*context uint8 bytes
    server -> scorer   READY    b"RDY1" + u32 n + n bytes of UTF-8 JSON ({"device": ...})
                       LOGITS   b"LGT4" + batch*context*vocab float32 (little-endian, C order)
                                b"LGT2" + the same as float16
                       FAILED   b"ERR1" + u32 n + n bytes UTF-8: agent code failed (status crash)
                                b"INV1" + u32 n + n bytes UTF-8: refused input, e.g. a pickled checkpoint (invalid)

The scorer closes the server's stdin when it is done; the server then exits. Every length is
bounded by the scorer before it reads (a message is at most MAX_MESSAGE bytes; logits are
exactly the expected size), so a hostile server cannot make the runner allocate without limit.
"""
from __future__ import annotations

import struct
from typing import BinaryIO

REQUEST = b"WIN1"
READY = b"RDY1"
LOGITS_F32 = b"LGT4"
LOGITS_F16 = b"LGT2"
FAILED = b"ERR1"
REFUSED = b"INV1"
LOGIT_TAGS = {LOGITS_F32: "<f4", LOGITS_F16: "<f2"}
MESSAGE_TAGS = (READY, FAILED, REFUSED)
MAX_MESSAGE = 4096
_U32 = struct.Struct("<I")


class ProtocolError(Exception):
    """The other end sent something the protocol does not allow, or hung up."""


def read_exact(f: BinaryIO, n: int) -> bytes:
    """n bytes, or ProtocolError on end of stream (the peer exited or was killed)."""
    chunks, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            raise ProtocolError(f"the stream ended after {got} of {n} bytes")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def write_all(f: BinaryIO, data: bytes) -> None:
    f.write(data)
    f.flush()


def request(batch: bytes, b: int, t: int) -> bytes:
    assert len(batch) == b * t
    return REQUEST + _U32.pack(b) + _U32.pack(t) + batch


def read_request(f: BinaryIO) -> tuple[int, int, bytes] | None:
    """(batch, context, bytes), or None at a clean end of stream."""
    tag = f.read(4)
    if not tag:
        return None
    if len(tag) < 4:
        tag += read_exact(f, 4 - len(tag))
    if tag != REQUEST:
        raise ProtocolError(f"unknown request tag {tag!r}")
    b, t = _U32.unpack(read_exact(f, 4))[0], _U32.unpack(read_exact(f, 4))[0]
    return b, t, read_exact(f, b * t)


def message(tag: bytes, text: str) -> bytes:
    data = text.encode("utf-8", "replace")[:MAX_MESSAGE]
    return tag + _U32.pack(len(data)) + data


def read_message_body(f: BinaryIO) -> str:
    n = _U32.unpack(read_exact(f, 4))[0]
    if n > MAX_MESSAGE:
        raise ProtocolError(f"a message of {n} bytes (at most {MAX_MESSAGE})")
    return read_exact(f, n).decode("utf-8", "replace")
