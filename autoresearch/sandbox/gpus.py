"""Which GPUs a run gets, and what each backend needs to give exactly those.

A request (SandboxSpec.gpus) is one of:
    None        no GPU: no device node, CUDA_VISIBLE_DEVICES="" inside
    "all"       every visible GPU (none on a host without GPUs: the run uses the CPU)
    N (int)     the first N visible GPUs; an error when fewer are visible
    (i, j, ...) exactly these host GPU indices; an error when one is not visible

Indices are the host's (nvidia-smi's, PCI bus order). "Visible" is the host's GPUs, narrowed
by CUDA_VISIBLE_DEVICES (the spec's env, else the runner's) when set. Discovery is separate
(`GpuHost.discover()`) so the argv and container settings can be built and checked for any
device list on a machine without GPUs.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .spec import GpuRequest, SandboxUnavailable

CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset",
                   "/dev/nvidia-caps")   # the driver's shared nodes (nvidia-caps: MIG), bound when present


@dataclass(frozen=True)
class GpuDevice:
    index: int      # the host's index (nvidia-smi, PCI bus order): CUDA_VISIBLE_DEVICES and docker device_ids
    minor: int      # its node: /dev/nvidia<minor>

    @property
    def node(self) -> str:
        return f"/dev/nvidia{self.minor}"


@dataclass(frozen=True)
class GpuHost:
    """The GPUs and driver control nodes of a host; tests build one by hand."""
    devices: tuple[GpuDevice, ...] = ()
    controls: tuple[str, ...] = field(default=())

    @staticmethod
    def discover() -> "GpuHost":
        """The driver's own list (/proc/driver/nvidia/gpus/<pci>/information: sorted by bus id it is
        nvidia-smi's order, and names each device's minor); else /dev/nvidia<N> taken as index N."""
        minors = []
        for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
            try:
                m = re.search(r"^Device Minor:\s*(\d+)", info.read_text(), re.M)
            except OSError:
                m = None
            if m:
                minors.append(int(m.group(1)))
        if not minors:
            minors = sorted(int(p.name[6:]) for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit())
        return GpuHost(tuple(GpuDevice(i, n) for i, n in enumerate(minors)),
                       tuple(c for c in CONTROL_DEVICES if os.path.exists(c)))


def _parse_cvd(value: str) -> list[int]:
    """CUDA_VISIBLE_DEVICES as indices; CUDA stops at the first entry that is not a device."""
    out: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit():
            if part.startswith(("GPU-", "MIG-")):
                raise SandboxUnavailable(
                    f"CUDA_VISIBLE_DEVICES={value!r} names GPUs by UUID: give indices (nvidia-smi -L), "
                    "or unset it and choose GPUs with sandbox.gpus in program.md")
            break
        out.append(int(part))
    return out


def visible(host: GpuHost, cvd: str | None) -> list[GpuDevice]:
    """The host's GPUs a run may be given: all of them, or those CUDA_VISIBLE_DEVICES names, in its order."""
    if cvd is None:
        return list(host.devices)
    by_index = {d.index: d for d in host.devices}
    out: list[GpuDevice] = []
    for i in dict.fromkeys(_parse_cvd(cvd)):
        if i not in by_index:                 # as CUDA does: the list ends at a device that is not there
            break
        out.append(by_index[i])
    return out


def select(request: GpuRequest, host: GpuHost, cvd: str | None) -> list[GpuDevice]:
    """The GPUs a request gets on this host; SandboxUnavailable (with the fix) when it cannot be met."""
    if isinstance(request, bool) or not (request is None or request == "all" or isinstance(request, (int, tuple))):
        raise TypeError(f"SandboxSpec.gpus: {request!r}: use None, 'all', a count or a tuple of indices")
    if request is None:
        return []
    seen = visible(host, cvd)
    where = f"CUDA_VISIBLE_DEVICES={cvd}" if cvd is not None else "on this host"
    names = ", ".join(str(d.index) for d in seen) or "none"
    if request == "all":
        return seen
    if isinstance(request, int):
        if request < 1 or request > len(seen):
            raise SandboxUnavailable(
                f"sandbox.gpus asks for {request} GPU(s) but {len(seen)} are visible {where} (indices: {names}): "
                "lower sandbox.gpus in program.md, or use all")
        return seen[:request]
    if not request or len(set(request)) != len(request):
        raise ValueError(f"SandboxSpec.gpus: {request!r}: give each index once")
    by_index = {d.index: d for d in seen}
    if missing := [i for i in request if i not in by_index]:
        raise SandboxUnavailable(
            f"sandbox.gpus asks for GPU(s) {list(request)} but {missing} not visible {where} "
            f"(visible indices: {names}): choose from these in program.md")
    return [by_index[i] for i in request]


def gpu_env(selected: list[GpuDevice]) -> dict[str, str]:
    """CUDA's view inside bwrap and none: exactly the selected host indices, numbered in PCI bus order
    (nvidia-smi's, so index i inside means the same GPU as outside)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(d.index) for d in selected), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def bwrap_gpu_args(selected: list[GpuDevice], host: GpuHost) -> list[str]:
    """bwrap binds: the selected /dev/nvidia<minor> and the control nodes; none without a selection."""
    if not selected:
        return []
    argv: list[str] = []
    for node in [d.node for d in selected] + list(host.controls):
        argv += ["--dev-bind-try", node, node]
    return argv


def docker_device_request(request: GpuRequest, selected: list[GpuDevice], host: GpuHost,
                          cvd: str | None) -> dict | None:
    """DeviceRequest fields for docker: every GPU (count -1) when the run gets all the host has,
    unnarrowed, else the exact indices; None without a selection. Docker renumbers them from 0 inside."""
    if not selected:
        return None
    if request == "all" and cvd is None and len(selected) == len(host.devices):
        return {"count": -1, "device_ids": None, "capabilities": [["gpu"]]}
    return {"count": None, "device_ids": [str(d.index) for d in selected], "capabilities": [["gpu"]]}


def cvd_of(env: dict[str, str]) -> str | None:
    """The CUDA_VISIBLE_DEVICES a run is narrowed by: the spec's env, else the runner's; None: not set."""
    return env.get("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))


def selected_gpus(request: GpuRequest, env: dict[str, str] | None = None, host: GpuHost | None = None
                  ) -> list[GpuDevice]:
    """The GPUs a run with this request and env gets on this host (what the backends give it)."""
    return select(request, host or GpuHost.discover(), cvd_of(env or {}))
