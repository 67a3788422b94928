"""The run stage's side of issue 16's GPU part: program.md's selection, launcher and shm as the
sandbox is given them, the fingerprint's device class, and doctor's report of the selection."""
from __future__ import annotations

from pathlib import Path

import pytest

from autoresearch.cli.doctor import check_gpu_selection
from autoresearch.program import parse_program
from autoresearch.record.identity import device_class
from autoresearch.record.layout import Layout
from autoresearch.run.specs import gpu_request, train_argv
from autoresearch.sandbox import SandboxSpec, choose_backend
from autoresearch.sandbox.gpus import GpuDevice, GpuHost

PY = "/venv/bin/python"
HOST = GpuHost(tuple(GpuDevice(i, i) for i in range(4)))


def program(front: str):
    return parse_program(f"---\n{front}\n---\n")


def lay(tmp_path: Path) -> Layout:
    return Layout(tmp_path, tmp_path / "runs" / "0001", "train.py")


@pytest.mark.parametrize("gpus, want", [("all", "all"), ("none", None), ("2", 2), ("[1, 3]", (1, 3))])
def test_program_gpus_become_the_sandbox_request(gpus, want):
    assert gpu_request(program(f"sandbox:\n  gpus: {gpus}")) == want


def test_train_argv_without_launcher_is_the_script_under_the_sandbox_python(tmp_path):
    assert train_argv(PY, program("objective: x"), lay(tmp_path), inline=False) == [PY, str(tmp_path / "train.py")]


def test_launcher_replaces_the_interpreter_before_the_script(tmp_path):
    p = program("run:\n  launcher: torchrun --nproc-per-node 2")
    assert train_argv(PY, p, lay(tmp_path), inline=False) == \
        ["torchrun", "--nproc-per-node", "2", str(tmp_path / "train.py")]


def test_inline_command_after_a_launcher_loses_its_python_and_keeps_its_arguments(tmp_path):
    p = program("run:\n  mode: inline\n  command: [python, train.py, --config, config/small.py]\n"
                "  metric_regex: 'val (\\S+)'\n  launcher: [torchrun, --standalone, --nproc-per-node, 8]")
    assert train_argv(PY, p, lay(tmp_path), inline=True) == \
        ["torchrun", "--standalone", "--nproc-per-node", "8", "train.py", "--config", "config/small.py"]
    p = program("run:\n  mode: inline\n  command: [./train.sh, fast]\n  metric_regex: 'v (\\S+)'\n"
                "  launcher: python -m torch.distributed.run --nproc-per-node 2")
    assert train_argv(PY, p, lay(tmp_path), inline=True) == \
        [PY, "-m", "torch.distributed.run", "--nproc-per-node", "2", "./train.sh", "fast"]


def test_a_launcher_that_needs_python_gets_the_sandbox_one(tmp_path):
    p = program("run:\n  launcher: mpirun -np 2 python")
    assert train_argv(PY, p, lay(tmp_path), inline=False) == ["mpirun", "-np", "2", PY, str(tmp_path / "train.py")]


@pytest.mark.parametrize("name", [pytest.param("docker", marks=pytest.mark.docker),
                                  pytest.param("bwrap", marks=pytest.mark.bwrap)])
def test_torchrun_launches_two_ranks_inside_the_sandbox(name, request, tmp_path):
    """A real launcher in a real sandbox: torchrun's rendezvous on the sandbox's loopback (no
    network; `localhost` must resolve), two ranks, each a process of the run."""
    request.getfixturevalue(f"{name}_available")
    script = tmp_path / "train.py"
    tmp_path.chmod(0o755)
    script.write_text("import os; os.write(1, f\"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}\\n\".encode())\n")
    # one write per rank (under PIPE_BUF: atomic); print() writes its pieces apart and two ranks interleaved
    b = choose_backend(name)
    rt = b.runtime()
    argv = train_argv(rt.python, program("run:\n  launcher: torchrun --standalone --nproc-per-node 2"),
                      lay(tmp_path), inline=False)
    from autoresearch.sandbox import Mount
    r = b.run(SandboxSpec(argv=argv, mounts=rt.mounts + [Mount(tmp_path, str(tmp_path))], env=dict(rt.env),
                          cwd=str(tmp_path), timeout_s=90, memory_bytes=4 << 30, capture_stdout=True,
                          gpus=None, log_path=tmp_path / "log"))
    assert r.exit_code == 0, (tmp_path / "log").read_text()[-2000:]
    assert sorted(r.stdout.decode().split("\n")[:2]) == ["rank 0 of 2", "rank 1 of 2"], r.stdout


def test_device_class_counts_gpus_and_keeps_cpu():
    assert device_class([]) == "cpu"
    one, eight = device_class([0]), device_class(list(range(8)))
    assert one.startswith("cuda") and not one.endswith("x1")        # one GPU: the fingerprint of before
    assert eight.endswith(" x8") and eight.startswith("cuda")
    assert one != eight


@pytest.mark.parametrize("front, host, level, words", [
    ("sandbox:\n  gpus: 2", HOST, "ok", ["sandbox.gpus: 2 -> GPU(s) 0, 1", "/dev/shm 1 GB"]),
    ("sandbox:\n  gpus: [3, 1]\n  shm_gb: 4", HOST, "ok", ["[3, 1] -> GPU(s) 3, 1", "/dev/shm 4 GB"]),
    ("sandbox:\n  gpus: 8", HOST, "warn", ["asks for 8 GPU(s) but 4 are visible"]),
    ("sandbox:\n  gpus: [5]", HOST, "warn", ["[5] not visible"]),
    ("sandbox:\n  gpus: all", GpuHost(), "info", ["all -> no GPU (CPU)"]),
    ("sandbox:\n  gpus: none", HOST, "ok", ["none -> no GPU (CPU)"]),
    ("sandbox:\n  gpus: 2\nrun:\n  launcher: torchrun --nproc-per-node 4", HOST, "warn",
     ["launcher: torchrun --nproc-per-node 4"]),
    ("sandbox:\n  gpus: 4\nrun:\n  launcher: torchrun --nproc_per_node=4", HOST, "ok", ["GPU(s) 0, 1, 2, 3"]),
])
def test_doctor_reports_the_selection(monkeypatch, tmp_path, front, host, level, words):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    c = check_gpu_selection(tmp_path, program(front), host=host)
    assert c.level == level, c
    for w in words:
        assert w in c.found, c
    if "nproc-per-node 4" in front:
        assert "starts 4 processes for 2 GPU(s)" in c.fix


def test_doctor_selection_respects_cuda_visible_devices(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    c = check_gpu_selection(tmp_path, program("sandbox:\n  gpus: 2"), host=HOST)
    assert c.level == "warn" and "CUDA_VISIBLE_DEVICES=2" in c.found
