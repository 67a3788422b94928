"""The EVAL wire protocol between the trusted scorer (runner) and the model server (sandbox).

Fixed binary frames over the server's stdin (requests) and stdout (answers); nothing else
crosses. One place for the format, used by both ends:

    scorer -> server   GO       b"GO01": the checkpoint is final; import agent code now (sent once, first)
                       REQUEST  b"WIN1" + u32 batch + u32 context + batch*context uint8 bytes
    server -> scorer   READY    b"RDY1" + u32 n + n bytes of UTF-8 JSON ({"device": ...})
                       LOGITS   b"LGT4" + batch*context*vocab float32 (little-endian, C order)
                                b"LGT2" + the same as float16
                       FAILED   b"ERR1" + u32 n + n bytes UTF-8: agent code failed (status crash)
                                b"INV1" + u32 n + n bytes UTF-8: refused input, e.g. a pickled checkpoint (invalid)

The scorer closes the server's stdin when it is done; the server then exits. Every length is
bounded by the scorer before it reads (a message is at most MAX_MESSAGE bytes; logits are
exactly the expected size), so a hostile server cannot make the runner allocate without limit.

The evaluator split (eval.model) speaks the same frames with named numpy arrays instead of windows
and logits, between the trusted eval script's client, the host relay and the model server:

    ARRAYS   b"ARQ1" (inputs) | b"ARA1" (outputs) + u32 n + n bytes of UTF-8 JSON header
             {"arrays": [{"name", "dtype", "shape"}, ...]} + each array's bytes, C order, in that order

The reader checks the header before it reads a byte of data: names ([A-Za-z_][A-Za-z0-9_]*, at
most MAX_ARRAYS), plain little-endian numeric dtypes (DTYPES: no object, string or pickled data),
at most MAX_NDIM dimensions, and the total size against the caller's limit.
"""
from __future__ import annotations

import json
import os
import re
import struct
import sys
import traceback
from typing import Any, BinaryIO, Callable

GO = b"GO01"
# What a server prints (to its log) between GO and importing agent code: eval_seconds counts from it.
AGENT_STARTS = "[autoresearch: GO: the checkpoint is final; agent code starts now, and with it eval_seconds]"
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
ARRAYS_IN = b"ARQ1"
ARRAYS_OUT = b"ARA1"
DTYPES = frozenset({"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"})
MAX_ARRAYS = 64
MAX_NDIM = 8
MAX_HEADER = 64 << 10
KNOWN_EXCEPTIONS = frozenset(
    {n for n, v in vars(__import__("builtins")).items() if isinstance(v, type) and issubclass(v, BaseException)}
    | {"OutOfMemoryError", "torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError", "CUDAError", "AcceleratorError",
       "numpy.linalg.LinAlgError", "LinAlgError", "Failed"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class ProtocolError(Exception):
    """The other end sent something the protocol does not allow, or hung up."""


class StreamEnded(ProtocolError):
    """The other end hung up mid-frame (it exited or was killed): not a malformed frame."""


def exception_name(name: str) -> str:
    """An exception type name a model server reports, if it is a builtin's or a known framework's;
    otherwise a fixed phrase. After a server has seen held-out inputs, whatever it says may encode
    them: a type of its own making (type("Tabc...", (Exception,), {})) would carry 80 characters."""
    return name if name in KNOWN_EXCEPTIONS else "an exception type of the model's own"


def read_exact(f: BinaryIO, n: int) -> bytes:
    """n bytes, or ProtocolError on end of stream (the peer exited or was killed)."""
    chunks, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            raise StreamEnded(f"the stream ended after {got} of {n} bytes")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def write_all(f: BinaryIO, data: bytes) -> None:
    f.write(data)
    f.flush()


def wait_go(f: BinaryIO) -> bool:
    """A server's gate between its trusted warm-up and agent code: True once GO arrives, False when
    the scorer hung up without it (TRAIN did not end ok: nothing to evaluate)."""
    try:
        tag = read_exact(f, len(GO))
    except StreamEnded:
        return False
    if tag != GO:
        raise ProtocolError(f"expected GO, got {tag!r}")
    return True


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
        raise ProtocolError(f"a message over {MAX_MESSAGE} bytes")
    return read_exact(f, n).decode("utf-8", "replace")


def arrays(tag: bytes, named: dict[str, Any]) -> bytes:
    """A frame of named arrays (numpy); ValueError, naming the fix, for what the protocol refuses."""
    import numpy as np
    if not isinstance(named, dict) or not 0 < len(named) <= MAX_ARRAYS:
        raise ValueError(f"send a dict of 1 to {MAX_ARRAYS} named numpy arrays, not {type(named).__name__}")
    head, blobs = [], []
    for name, a in named.items():
        a = np.asarray(a)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<") if a.dtype.byteorder != "|" else a.dtype)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"array name {name!r}: use a Python identifier of at most 64 characters")
        if a.dtype.str not in DTYPES or a.ndim > MAX_NDIM:
            raise ValueError(f"array {name!r}: {a.dtype} with {a.ndim} dimensions; send bool, int, uint or float "
                             f"arrays of at most {MAX_NDIM} dimensions (encode text as uint8 bytes or token ids)")
        head.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)})
        blobs.append(a.tobytes())
    header = json.dumps({"arrays": head}).encode()
    return tag + _U32.pack(len(header)) + header + b"".join(blobs)


def read_arrays(f: BinaryIO, limit: int) -> dict[str, Any]:
    """The named arrays of a frame whose tag was read; ProtocolError for anything the header does
    not allow, before the data is read. Sizes are Python integers (numpy's int64 products wrap, and
    a wrapped size would pass the limit); every header error is a ProtocolError, never another
    exception a caller might not expect from a hostile peer."""
    import math
    import numpy as np
    n = _U32.unpack(read_exact(f, 4))[0]
    if n > MAX_HEADER:
        raise ProtocolError(f"an array header over {MAX_HEADER} bytes")
    raw = read_exact(f, n)
    try:
        head = json.loads(raw)["arrays"]
        specs = [(a["name"], a["dtype"], tuple(a["shape"])) for a in head]
    except (ValueError, KeyError, TypeError, RecursionError, AttributeError):
        raise ProtocolError("an unreadable array header") from None
    total, names = 0, set()
    for name, dt, shape in specs:
        if not (isinstance(name, str) and _NAME.fullmatch(name) and name not in names and isinstance(dt, str)
                and dt in DTYPES and len(shape) <= MAX_NDIM
                and all(type(d) is int and 0 <= d <= limit for d in shape)):
            raise ProtocolError("an array whose name, dtype or shape the protocol refuses")
        names.add(name)
        total += math.prod(shape) * np.dtype(dt).itemsize
    if not 0 < len(specs) <= MAX_ARRAYS or total > limit:
        raise ProtocolError(f"more than {MAX_ARRAYS} arrays, none, or more than {limit} bytes")
    out = {}
    for name, dt, shape in specs:
        size = math.prod(shape) * np.dtype(dt).itemsize
        out[name] = np.frombuffer(read_exact(f, size), dtype=dt).reshape(shape)
    return out


# ---------------------------------------------------------------- a server process's own plumbing

def server_channels() -> tuple[BinaryIO, BinaryIO]:
    """(requests, answers) for a server of agent code: private copies of fd 0 and fd 1; fd 1 then
    points at stderr (what agent code prints goes to the human-only log) and fd 0 at /dev/null
    (agent code reading stdin gets nothing)."""
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    wfile = os.fdopen(private, "wb", buffering=0)
    rfile = os.fdopen(os.dup(0), "rb", buffering=0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return rfile, wfile


def serve_main(name: str, body: Callable[[BinaryIO, BinaryIO], None],
               answers: dict[type[BaseException], bytes]) -> None:
    """A server's main once its arguments are parsed: `body(requests, answers)` on the private
    channels; an exception of a type in `answers` is sent as that tag with its message (the
    verdict the other side records), a broken channel is said on stderr. Then os._exit(0): agent
    atexit handlers and threads never run."""
    rfile, wfile = server_channels()
    try:
        body(rfile, wfile)
    except tuple(answers) as e:
        write_all(wfile, message(next(tag for cls, tag in answers.items() if isinstance(e, cls)), str(e)))
    except (ProtocolError, BrokenPipeError) as e:
        print(f"{name}: {e}", file=sys.stderr, flush=True)
    sys.stderr.flush()
    os._exit(0)


def run_server(main: Callable[[], object]) -> None:
    """A server's __main__: an unexpected error is a traceback on stderr and exit 3; agent atexit
    handlers and threads never run (main ends with os._exit)."""
    try:
        main()
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
