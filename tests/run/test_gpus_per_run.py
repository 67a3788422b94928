"""Issue 29: a run may take N GPUs (executor.gpus_per_run). A local wave packs runs by it: on an
8-GPU host an 8-rank run gets one slot holding all eight (not a slot pinned to one GPU, where its
torchrun would fail), 4-GPU runs get two disjoint slots. Ray tasks ask for N GPUs. The device
class in the fingerprint counts the GPUs, so an 8-GPU run is never compared with a 1-GPU one."""
from __future__ import annotations

import pytest

from autoresearch.program import ConfigError, parse_program
from autoresearch.record.identity import device_class
from autoresearch.run.scheduler import gpu_group, pin_slot, slots_for
from autoresearch.sandbox import gpus as gpus_mod
from autoresearch.sandbox.gpus import GpuDevice, GpuHost


def _program(per_run: int | None):
    ex = f"executor: {{gpus_per_run: {per_run}}}\n" if per_run else ""
    return parse_program(f"---\n{ex}sandbox: {{backend: none}}\n---\n")


@pytest.fixture
def eight(monkeypatch):
    host = GpuHost(tuple(GpuDevice(i, i) for i in range(8)))
    monkeypatch.setattr(gpus_mod.GpuHost, "discover", staticmethod(lambda: host))
    return host


def test_gpu_groups_are_disjoint_and_wrap():
    idx = list(range(8))
    assert gpu_group(idx, 0, 1) == [0] and gpu_group(idx, 9, 1) == [1]
    assert [gpu_group(idx, k, 4) for k in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    assert gpu_group(idx, 1, 8) == idx and gpu_group([0, 1], 0, 8) == [0, 1]


@pytest.mark.parametrize("per_run,slots,first", [(None, 8, [0]), (4, 2, [0, 1, 2, 3]), (8, 1, list(range(8)))])
def test_a_wave_packs_runs_by_gpus_per_run(eight, per_run, slots, first):
    program = _program(per_run)
    assert slots_for(program) == slots
    assert pin_slot(program, 0, slots).sandbox.gpus == first
    if slots > 1:
        assert not set(pin_slot(program, 1, slots).sandbox.gpus) & set(first)


def test_gpus_per_run_is_checked():
    with pytest.raises(ConfigError, match="gpus_per_run"):
        parse_program("---\nexecutor: {gpus_per_run: 0}\n---\n")


def test_the_fingerprint_s_device_counts_gpus():
    assert device_class([0]) != device_class(list(range(8))) and device_class(list(range(8))).endswith(" x8")


def test_a_ray_task_asks_for_gpus_per_run():
    from autoresearch.run.rayexec import wanted
    assert wanted(_program(None)) == {"GPU": 1.0} and wanted(_program(8)) == {"GPU": 8.0}
    assert wanted(parse_program("---\nexecutor: {kind: ray, resources: {GPU: 2, CPU: 4}}\n---\n")) == \
        {"GPU": 2, "CPU": 4}
