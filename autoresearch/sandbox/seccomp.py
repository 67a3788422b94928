"""The seccomp filter bwrap installs (docker keeps its own default profile), generated here
as classic BPF for x86_64 and aarch64."""
from __future__ import annotations

import errno
import os

# Default allow, with the syscalls a training run never needs denied: nested user namespaces
# (clone/unshare with CLONE_NEWUSER; clone3 gets ENOSYS, so glibc falls back to clone, whose
# flags can be checked), mounts, keyrings, bpf, perf, ptrace and cross-process memory access,
# module/kexec/swap/reboot. Docker keeps its own default profile. Measured: the baseline
# train.py and the evaluator (python + torch, CPU) run unchanged under it (tests/sandbox/test_sandbox_hostile.py).
_DENY = ("mount", "umount2", "pivot_root", "chroot", "setns", "open_tree", "move_mount", "fsopen", "fsconfig",
         "fsmount", "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
         "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load", "init_module",
         "finit_module", "delete_module", "swapon", "swapoff", "reboot", "acct", "syslog", "quotactl",
         "open_by_handle_at", "name_to_handle_at", "userfaultfd")
_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}   # machine -> its audit arch
_NR = dict(   # syscall -> (its number on x86_64, on aarch64)
    mount=(165, 40), umount2=(166, 39), pivot_root=(155, 41), chroot=(161, 51), setns=(308, 268),
    open_tree=(428, 428), move_mount=(429, 429), fsopen=(430, 430), fsconfig=(431, 431), fsmount=(432, 432),
    fspick=(433, 433), mount_setattr=(442, 442), keyctl=(250, 219), add_key=(248, 217), request_key=(249, 218),
    bpf=(321, 280), perf_event_open=(298, 241), ptrace=(101, 117), process_vm_readv=(310, 270),
    process_vm_writev=(311, 271), kexec_load=(246, 104), kexec_file_load=(320, 294), init_module=(175, 105),
    finit_module=(313, 273), delete_module=(176, 106), swapon=(167, 224), swapoff=(168, 225), reboot=(169, 142),
    acct=(163, 89), syslog=(103, 116), quotactl=(179, 60), open_by_handle_at=(304, 265),
    name_to_handle_at=(303, 264), userfaultfd=(323, 282), clone=(56, 220), unshare=(272, 97), clone3=(435, 435))
_SYSCALLS = {m: (arch, {name: nr[i] for name, nr in _NR.items()})   # (audit arch, {name: number}) per machine
             for i, (m, arch) in enumerate(_ARCH.items())}
_CLONE_NEWUSER = 0x10000000


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The classic-BPF program (struct sock_filter[]) for bwrap --seccomp; None on a machine
    without a syscall table here. Wrong architecture (e.g. i386 int 0x80 on x86_64): kill."""
    import struct
    table = _SYSCALLS.get(machine or os.uname().machine)
    if table is None:
        return None
    arch, nr = table
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    prog: list[tuple[int, int, int, int]] = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, KILL), (LD, 0, 0, 0)]
    if arch == 0xC000003E:                                  # x32 ABI syscalls: not for us
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, enosys)]
    for name in _DENY:
        prog += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, eperm)]
    prog += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, enosys)]
    for name in ("clone", "unshare"):                       # flags are args[0] (low word at offset 16)
        prog += [(JEQ, 0, 4, nr[name]), (LD, 0, 0, 16), (JSET, 0, 1, _CLONE_NEWUSER),
                 (RET, 0, 0, eperm), (RET, 0, 0, ALLOW)]
    prog.append((RET, 0, 0, ALLOW))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)

