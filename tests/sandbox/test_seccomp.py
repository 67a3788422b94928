"""The generated seccomp filter (autoresearch/sandbox/seccomp.py) against the real kernel: a process
that installs it cannot make a user namespace or mount, gets ENOSYS for clone3 (so glibc falls back
to clone, whose flags the filter checks), and can still fork and unshare other namespaces. The same
probe without the filter is the control."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autoresearch.sandbox.seccomp import seccomp_filter

PROBE = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"x86_64": {"clone3": 435, "mount": 165}, "aarch64": {"clone3": 435, "mount": 40}}[os.uname().machine]
bpf = sys.stdin.buffer.read()
if bpf:
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = Prog(len(bpf) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0                       # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()   # SECCOMP_MODE_FILTER

def call(f, *a):
    r = f(*a)
    return 0 if r == 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

out = {"newuser": call(libc.unshare, 0x10000000),
       "newuts": call(libc.unshare, 0x04000000),
       "clone3": call(libc.syscall, NR["clone3"], None, 0),
       "mount": call(libc.syscall, NR["mount"], b"none", b"/mnt", b"tmpfs", 0, None)}
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(out))
"""


def probe(bpf: bytes) -> dict:
    p = subprocess.run([sys.executable, "-I", "-c", PROBE], input=bpf, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"), reason="no syscall table for this machine")
def test_the_filter_denies_user_namespaces_and_mounts_but_allows_fork():
    bpf = seccomp_filter()
    assert bpf is not None and len(bpf) % 8 == 0
    under = probe(bpf)
    assert under["newuser"] == "EPERM" and under["mount"] == "EPERM" and under["clone3"] == "ENOSYS", under
    assert under["fork"] == 7, under                 # clone without CLONE_NEWUSER still works
    control = probe(b"")
    assert control["clone3"] != "ENOSYS" and control["fork"] == 7, control
    if control["newuts"] == 0:                       # where this process may unshare at all (root, here)
        assert under["newuts"] == 0, under           # flags without CLONE_NEWUSER pass the filter
    if control["newuser"] == 0:
        assert under["newuser"] == "EPERM"


def test_an_unknown_machine_gets_no_filter():
    assert seccomp_filter("riscv64") is None
    assert seccomp_filter("x86_64") != seccomp_filter("aarch64")
