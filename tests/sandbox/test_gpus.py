"""GPU selection and /dev/shm, per backend.

This machine has no GPU, so the device side is checked on what each backend is built to do for
a given (hand-made) host: bwrap's argv, and a real docker container created, not started, and
inspected. /dev/shm is checked for real inside both sandboxes."""
from __future__ import annotations

import contextlib
import os
import textwrap

import pytest

from autoresearch.sandbox import BwrapBackend, NoneBackend, SandboxSpec, SandboxUnavailable, choose_backend
from autoresearch.sandbox.container import _ContainerRun
from autoresearch.sandbox.gpus import GpuDevice, GpuHost, gpu_env, select

# four GPUs; the driver numbered the nodes out of bus order (index 2 is /dev/nvidia3)
HOST = GpuHost(devices=(GpuDevice(0, 0), GpuDevice(1, 1), GpuDevice(2, 3), GpuDevice(3, 2)),
               controls=("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"))
CONTROLS = set(HOST.controls)


def idx(devs) -> list[int]:
    return [d.index for d in devs]


@pytest.mark.parametrize("request_, cvd, want", [
    ("all", None, [0, 1, 2, 3]),
    ("all", "3,1", [3, 1]),          # CUDA_VISIBLE_DEVICES narrows, in its order
    ("all", "", []),
    ("all", "-1", []),
    ("all", "1,9,2", [1]),           # CUDA stops at the first entry that is not a device; 9 is not on this host
    (None, None, []),
    (2, None, [0, 1]),
    (2, "3,2,1", [3, 2]),            # the first N visible
    ((3, 0), None, [3, 0]),
    ((2,), "2,3", [2]),
])
def test_selection(request_, cvd, want):
    assert idx(select(request_, HOST, cvd)) == want


@pytest.mark.parametrize("request_, cvd, words", [
    (5, None, ["5 GPU(s)", "4 are visible", "0, 1, 2, 3"]),
    (2, "3", ["2 GPU(s)", "1 are visible", "CUDA_VISIBLE_DEVICES=3"]),
    (1, "", ["1 GPU(s)", "0 are visible"]),
    ((0, 7), None, ["[7] not visible", "0, 1, 2, 3"]),
    ((0,), "1,2", ["[0] not visible", "CUDA_VISIBLE_DEVICES=1,2"]),
    ("all", "GPU-8f3c,GPU-77aa", ["by UUID", "sandbox.gpus"]),
])
def test_selection_that_cannot_be_met_says_why(request_, cvd, words):
    with pytest.raises(SandboxUnavailable) as e:
        select(request_, HOST, cvd)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("bad", [True, False, [0, 1], "some", (1, 1), ()])
def test_malformed_request_is_refused(bad):
    with pytest.raises((TypeError, ValueError)):
        select(bad, HOST, None)


def test_no_gpu_host_all_means_cpu_and_a_count_fails():
    empty = GpuHost()
    assert select("all", empty, None) == []
    with pytest.raises(SandboxUnavailable, match="0 are visible"):
        select(1, empty, None)


def _spec(gpus, env=None, shm=1 << 30) -> SandboxSpec:
    return SandboxSpec(argv=["true"], mounts=[], env=env or {}, cwd="/tmp", timeout_s=5, memory_bytes=1 << 30,
                       gpus=gpus, shm_bytes=shm)


def _dev_binds(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--dev-bind-try"]


@pytest.mark.bwrap
@pytest.mark.parametrize("gpus, cvd, nodes", [
    ("all", None, ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia3", "/dev/nvidia2"]),
    ("all", "2", ["/dev/nvidia3"]),
    (2, None, ["/dev/nvidia0", "/dev/nvidia1"]),
    ((0, 2), None, ["/dev/nvidia0", "/dev/nvidia3"]),     # index 2's node is /dev/nvidia3
    ((3,), None, ["/dev/nvidia2"]),
])
def test_bwrap_binds_only_the_selected_nodes_and_the_controls(bwrap_available, gpus, cvd, nodes):
    env = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    argv = BwrapBackend().command(_spec(gpus, env), 3, 4, gpu_host=HOST)
    binds = _dev_binds(argv)
    assert binds == nodes + list(HOST.controls)
    assert argv[argv.index("--tmpfs", argv.index("--dev")) + 1] == "/tmp"
    assert argv.index("/dev/nvidia-uvm") < argv.index("--")     # all before the command


@pytest.mark.bwrap
@pytest.mark.parametrize("gpus, cvd", [(None, None), ("all", ""), ("all", "-1")])
def test_bwrap_without_a_selection_binds_no_nvidia_node(bwrap_available, gpus, cvd):
    env = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    argv = BwrapBackend().command(_spec(gpus, env), 3, 4, gpu_host=HOST)
    assert _dev_binds(argv) == []
    assert not [a for a in argv if "nvidia" in a]


@pytest.mark.bwrap
def test_bwrap_shm_is_a_sized_tmpfs_after_dev(bwrap_available):
    argv = BwrapBackend().command(_spec(None, shm=123 << 20), 3, 4, gpu_host=HOST)
    i = argv.index("/dev/shm")
    assert argv[i - 5:i] == ["--size", str(123 << 20), "--perms", "1777", "--tmpfs"]
    assert argv.index("--dev") < i


def test_gpu_env_names_host_indices_in_bus_order():
    sel = select((3, 0), HOST, None)
    assert gpu_env(sel) == {"CUDA_VISIBLE_DEVICES": "3,0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert gpu_env([]) == {"CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def _inside(backend, code: str, **kw) -> str:
    rt = backend.runtime()
    r = backend.run(SandboxSpec(argv=[rt.python, "-c", textwrap.dedent(code)], mounts=rt.mounts, env=dict(rt.env),
                                cwd="/tmp", timeout_s=60, memory_bytes=1 << 30, capture_stdout=True, **kw))
    assert r.exit_code == 0, r
    return r.stdout.decode().strip()


_SHM = """
    import os, errno
    st = os.statvfs('/dev/shm')
    try:
        with open('/dev/shm/fill', 'wb') as f:
            for _ in range(64):
                f.write(b'x' * (1 << 20))
                f.flush()
        full = 'no'
    except OSError as e:
        full = errno.errorcode[e.errno]
    print(st.f_blocks * st.f_frsize, full)
"""


@pytest.mark.parametrize("name", [pytest.param("docker", marks=pytest.mark.docker),
                                  pytest.param("bwrap", marks=pytest.mark.bwrap)])
def test_shm_has_the_requested_size(name, request):
    """/dev/shm inside is the size asked for, and writing past it fails (ENOSPC) inside the run."""
    request.getfixturevalue(f"{name}_available")
    b = choose_backend(name)
    size, full = _inside(b, _SHM, shm_bytes=16 << 20).split()
    assert int(size) == 16 << 20
    assert full == "ENOSPC"
    size, full = _inside(b, _SHM, shm_bytes=256 << 20).split()
    assert int(size) == 256 << 20 and full == "no"


@pytest.mark.bwrap
def test_bwrap_and_none_set_cuda_visible_devices_to_the_selection(bwrap_available, monkeypatch):
    """No GPU here: "all" is none of them, said explicitly inside; an unmet count stops the run."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    for b in (choose_backend("bwrap"), NoneBackend()):
        assert _inside(b, "import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES')))", gpus="all") == "''"
        with pytest.raises(SandboxUnavailable, match="1 GPU"):
            _inside(b, "print(1)", gpus=1)


@pytest.fixture
def docker_backend(docker_available):
    b = choose_backend("docker")
    b.runtime()
    return b


def _created(b, spec: SandboxSpec, host: GpuHost) -> tuple[dict, dict]:
    """Create (not start) the real container this spec makes on `host`; its HostConfig and Config."""
    import docker.errors
    run = _ContainerRun(b.client().api, b._image_id, spec, None, None)
    run.gpu_host = host
    try:
        cid = run._create_container()
        info = b.client().api.inspect_container(cid)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            b.client().api.remove_container(run.name, force=True)
    return info["HostConfig"], dict(e.split("=", 1) for e in info["Config"]["Env"])


@pytest.mark.docker
@pytest.mark.parametrize("gpus, cvd, count, ids", [
    ("all", None, -1, None),                    # everything the host has: docker's "all"
    ("all", "1,3", 0, ["1", "3"]),
    (2, None, 0, ["0", "1"]),
    ((0, 3), None, 0, ["0", "3"]),
    ((2,), "2,3", 0, ["2"]),
])
def test_docker_requests_exactly_the_selected_devices(docker_backend, monkeypatch, gpus, cvd, count, ids):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env = {"PATH": "/usr/bin"} | ({} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd})
    hc, env_in = _created(docker_backend, _spec(gpus, env, shm=96 << 20), HOST)
    (req,) = hc["DeviceRequests"]
    assert (req["Count"], req["DeviceIDs"] or None, req["Capabilities"]) == (count, ids, [["gpu"]])
    assert hc["ShmSize"] == 96 << 20
    assert "CUDA_VISIBLE_DEVICES" not in env_in           # docker renumbers the devices from 0 inside
    assert env_in["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


@pytest.mark.docker
@pytest.mark.parametrize("gpus, host", [(None, HOST), ("all", GpuHost()), ("all", HOST)])
def test_docker_without_a_selection_requests_no_device(docker_backend, monkeypatch, gpus, host):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1") if host is HOST and gpus == "all" else None
    hc, env_in = _created(docker_backend, _spec(gpus, {"PATH": "/usr/bin"}), host)
    assert not hc.get("DeviceRequests")
    assert hc["ShmSize"] == 1 << 30


@pytest.mark.docker
def test_docker_refuses_an_unmet_selection_before_creating(docker_backend):
    with pytest.raises(SandboxUnavailable, match="5 GPU"):
        _created(docker_backend, _spec(5, {"PATH": "/usr/bin"}), HOST)
    assert not docker_backend.client().containers.list(all=True, filters={"label": "org.autoresearch.sandbox.pid="
                                                                           f"{os.getpid()}"})


def test_discovered_host_matches_dev(tmp_path):
    """Discovery on this machine: one device per /dev/nvidia<N> (none here), controls only if present."""
    host = GpuHost.discover()
    nodes = sorted(p for p in os.listdir("/dev") if p.startswith("nvidia") and p[6:].isdigit())
    assert len(host.devices) == len(nodes)
    assert all(os.path.exists(c) for c in host.controls)
