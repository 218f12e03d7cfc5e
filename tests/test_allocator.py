"""The C allocator's settings for CPU training (`lit_posttrain.allocator`): a large block freed and
allocated again reuses its pages instead of faulting new ones in; a user's own glibc settings win;
a one-process run on the CPU takes them at setup, and no other run does."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

import lit_posttrain.methods.base as base
from lit_posttrain.allocator import _glibc, keep_freed_memory
from lit_posttrain.data.arithmetic import Arithmetic
from lit_posttrain.data.datamodule import TaskDataModule
from lit_posttrain.methods.sft import SFT

glibc_only = pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt (Linux with glibc)")

# A step in miniature: four 40 MiB activations (above glibc's largest mmap threshold, 32 MiB)
# written, then freed together; after four such steps (the heap grows over the first few to hold
# them beside Python's small blocks), the page faults of a step: the median of five more (one run
# in six faulted a block in again once, under the same settings; the claim is the usual step's).
_STEPS = """
    import resource, sys, torch
    from lit_posttrain.allocator import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def step():
        activations = [torch.empty(40 << 20, dtype=torch.uint8).fill_(1) for _ in range(4)]
    for _ in range(4):
        step()
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sorted(faults)[2])
"""


def _faults_of_a_step(setting: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_STEPS), setting], env=env, capture_output=True, text=True, timeout=120
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@glibc_only
def test_a_step_s_freed_activations_are_reused_without_faulting_their_pages_again():
    system, kept = _faults_of_a_step("system"), _faults_of_a_step("keep")
    assert kept < 64, (system, kept)  # the blocks come back from the heap's resident pages
    # glibc's default maps each block anew and the kernel faults in every page (with transparent
    # huge pages always on, a few dozen 2 MiB ones instead).
    if "[always]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text():
        assert system > 4 * (40 << 20) // os.sysconf("SC_PAGE_SIZE") // 2, (system, kept)


@pytest.mark.parametrize(
    "variable, value", [("MALLOC_MMAP_THRESHOLD_", "65536"), ("MALLOC_ARENA_MAX", "2"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")]
)  # fmt: skip
def test_the_environment_s_allocator_settings_win(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert keep_freed_memory() is False


def test_a_one_process_cpu_run_takes_the_settings_at_setup(monkeypatch):
    calls = []
    monkeypatch.setattr(base, "keep_freed_memory", lambda: calls.append(True))
    module = SFT(model="tiny-random-llama", dtype="float32")
    data = TaskDataModule(task=Arithmetic(max_operand=5, num_train=4, num_eval=2), batch_size=2)
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert calls == [True]


@pytest.mark.parametrize("device, world_size", [("cpu", 2), ("meta", 1)])
def test_runs_of_several_processes_or_off_the_cpu_leave_the_allocator_alone(monkeypatch, device, world_size):
    calls = []
    monkeypatch.setattr(base, "keep_freed_memory", lambda: calls.append(True))
    module = SFT(model="tiny-random-llama", dtype="float32")
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), world_size=world_size)
    module.setup("validate")
    assert calls == []
