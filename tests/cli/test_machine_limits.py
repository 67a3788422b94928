"""Issue 29: init sizes the sandbox to the machine and the repo's launcher, instead of a fixed
memory_gb 8 / pids 512 / 1 GB /dev/shm that an 8-rank torchrun run with DataLoader workers
cannot fit. The proposal parses as program.md (shm within memory)."""
from __future__ import annotations

import pytest

from autoresearch.cli import machine
from autoresearch.cli.init import InitOptions, program_text
from autoresearch.cli.machine import ranks, sandbox_limits
from autoresearch.program import parse_program


@pytest.mark.parametrize("command,n", [
    (["python", "train.py"], 1),
    (["torchrun", "--nproc-per-node", "8", "train.py"], 8),
    (["torchrun", "--nproc_per_node=4", "train.py"], 4),
    (["python", "train.py", "trainer.devices=2"], 2),
    (["python", "train.py", "--devices", "3"], 3)])
def test_ranks_come_from_the_launcher(command, n):
    assert ranks(command) == n


def test_limits_grow_with_ranks_and_cores_and_fit_the_machine():
    one = sandbox_limits(["python", "train.py"], memory_gb=64, cpus=16)
    assert one == {"memory_gb": 8.0, "pids": 512, "shm_gb": 2.0}
    eight = sandbox_limits(["torchrun", "--nproc-per-node", "8", "train.py"], memory_gb=1024, cpus=128)
    assert eight["memory_gb"] == 64 and eight["pids"] >= 8 * 128 and eight["shm_gb"] == 16
    small = sandbox_limits(["torchrun", "--nproc-per-node", "8", "train.py"], memory_gb=16, cpus=4)
    assert small["memory_gb"] == 12 and small["shm_gb"] <= small["memory_gb"] / 2     # 75% of a small machine


def test_init_writes_the_machine_sized_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "machine_memory_gb", lambda: 512.0)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 64)
    text = program_text(InitOptions(path=tmp_path, command=["torchrun", "--nproc-per-node", "8", "train.py"],
                                    metric="val_loss", direction="minimize"), "train.py")
    sb = parse_program(text).sandbox
    assert (sb.memory_gb, sb.shm_gb) == (64, 16) and sb.pids == 8 * (64 + 4 * 64)


def test_init_sets_offline_modes_for_wandb_and_hugging_face(tmp_path):
    """Issue 29: runs have no network, so a repo that logs to W&B or loads Hugging Face/timm weights
    gets the offline settings in run.env, and a note on where the weights must come from."""
    import subprocess
    from autoresearch.cli.repodeps import cache_note, imported
    (tmp_path / "train.py").write_text("import wandb\nfrom timm import create_model\nimport torch\n")
    (tmp_path / "hub.py").write_text("w = torch.hub.load_state_dict_from_url(URL, progress=False)\n")
    (tmp_path / "untracked.py").write_text("import transformers\n")           # not the repo's code
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "train.py", "hub.py"], cwd=tmp_path, check=True)
    assert imported(tmp_path) == {"wandb", "timm", "torch.hub"}
    env = parse_program(program_text(InitOptions(path=tmp_path, command=["python", "train.py"], metric="val_loss",
                                                 direction="minimize"), "train.py")).run.env
    assert env == {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    (tmp_path / "home" / ".cache" / "huggingface").mkdir(parents=True)
    note = cache_note({"timm"}, home=tmp_path / "home")
    assert "sandbox.cache" in note and str(tmp_path / "home" / ".cache" / "huggingface") in note
    assert cache_note({"wandb"}) is None
    hub = cache_note({"torch.hub"})
    assert "torch/hub/checkpoints" in hub and "HF_HUB_OFFLINE" not in hub


def _night(tmp_path, out_mb: int, n: int = 3):
    """A project with n run folders: a 10 kB log and out_mb MB of checkpoints each."""
    for i in range(1, n + 1):
        out = tmp_path / "runs" / f"{i:04d}" / "out"
        out.mkdir(parents=True)
        (out.parent / "train.log").write_bytes(b"x" * 10_000)
        (out / "ckpt.pt").write_bytes(b"\0" * (out_mb * 2**20))
    return parse_program(program_text(InitOptions(path=tmp_path, command=["python", "train.py"], metric="val_loss",
                                                  direction="minimize", budget_seconds=20), "train.py"))


def test_disk_plan_sizes_a_night_from_the_run_folders_and_warns_when_it_will_not_fit(tmp_path, monkeypatch):
    """Issue 29: how much disk a night needs (run folders, checkpoints, logs), said before it starts."""
    from collections import namedtuple
    from autoresearch.cli.machine import disk_plan
    from autoresearch.cli.overnight import disk_warning
    program = _night(tmp_path, out_mb=4)
    usage = namedtuple("usage", "total used free")
    free = {"bytes": 10 * 2**30}
    monkeypatch.setattr(machine.shutil, "disk_usage", lambda _p: usage(100 * 2**30, 0, free["bytes"]))
    plan = disk_plan(tmp_path, program, hours=8)
    # 80 s a run (budget 20 + grace 60: no measured pace yet) for 8 h, capped by the phase's 20 experiments + baseline
    assert plan.runs == 21 and plan.per_run_bytes == 4 * 2**20 + 10_000 and plan.out_bytes == 4 * 2**20
    assert plan.measured == ["runs/0001", "runs/0002", "runs/0003"] and plan.fits and plan.warning() is None
    assert disk_plan(tmp_path, program, hours=0.01).runs == 1
    free["bytes"] = 2**30 + 50 * 2**20            # the reserve (1 GiB) + 50 MB: fits only with checkpoints pruned
    w = disk_plan(tmp_path, program, hours=8).warning()
    assert "delete the checkpoints" in w and "stop early" not in w, w
    free["bytes"] = 2**30 + 2**20                 # not even the logs
    w = disk_plan(tmp_path, program, hours=8).warning()
    assert "the night will stop early" in w and "--hours" in w, w
    (tmp_path / "program.md").write_text(program_text(InitOptions(path=tmp_path, command=["python", "train.py"],
                                                                  metric="val_loss", direction="minimize"), "train.py"))
    from rich.console import Console
    console = Console(record=True, width=300)
    assert disk_warning(tmp_path, 8, console) and "disk: a night of up to 21 runs" in console.export_text()
    from autoresearch.cli.doctor import check_disk           # doctor shows it too, for program.md's deadline
    c = check_disk(tmp_path, program)
    assert c.level == "warn" and "for up to 21 runs in 10 h" in c.found and "stop early" in c.fix
    free["bytes"] = 50 * 2**30
    assert check_disk(tmp_path, program).level == "ok"


def test_disk_plan_needs_a_run_to_measure(tmp_path):
    from autoresearch.cli.machine import disk_plan
    program = _night(tmp_path, out_mb=0, n=0)
    assert disk_plan(tmp_path, program, hours=8) is None
    from autoresearch.cli.doctor import check_disk
    assert check_disk(tmp_path, program).level == "info"
