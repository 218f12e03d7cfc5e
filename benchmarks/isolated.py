"""A benchmark setting measured in a process of its own: peak resident memory is a process's
high-water mark, so every setting needs a fresh one, and runs must not overlap (two processes at
once slowed phases here by up to 200x)."""

from __future__ import annotations

import json
import os
import subprocess


def run_isolated(command: list[str], label: dict, env: dict | None = None, marker: str = "") -> dict:
    """Run `command` to its end and return the JSON its output's last line starting with `marker`
    holds, or `label` with how it failed. It runs with `MALLOC_MMAP_THRESHOLD_=65536`: glibc
    otherwise raises its mmap threshold as large blocks are freed and serves later ones from a heap
    it does not give back, and the peak then moved by ~2 GiB between identical runs here."""
    env = {**os.environ, **(env or {}), "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line[len(marker) :] for line in done.stdout.splitlines() if line.startswith(marker) and line.strip()]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {**label, "failed": f"exit {done.returncode}", "stderr": done.stderr[-600:]}
