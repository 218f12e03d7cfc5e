"""A benchmark setting measured in a process of its own: peak resident memory is a process's
high-water mark, so every setting needs a fresh one, and runs must not overlap (two processes at
once slowed phases here by up to 200x)."""

from __future__ import annotations

import json
import os
import subprocess


def run_isolated(command: list[str], label: dict, env: dict | None = None, marker: str = "") -> dict:
    """Run `command` to its end and return the JSON its output's last line starting with `marker`
    holds, or `label` with how it failed.

    The C allocator keeps its settings from the environment, as a run of the CLI does: glibc's
    defaults unless `MALLOC_*` variables are set. These move both numbers a benchmark reports:
    before 2026-12-04 every isolated run set `MALLOC_MMAP_THRESHOLD_=65536` (each block from 64
    KiB up mapped apart and handed back when freed, so that the peak was the memory in use), and
    a GRPO step of 8 x 8 completions of 1,024 tokens took 1.6-1.7x as long as with glibc's defaults
    for a quarter less peak memory (3.43 against 4.66 GiB; benchmarks/README.md). Set it in the
    environment to measure that setting again."""
    env = {**os.environ, **(env or {})}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line[len(marker) :] for line in done.stdout.splitlines() if line.startswith(marker) and line.strip()]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {**label, "failed": f"exit {done.returncode}", "stderr": done.stderr[-600:]}
