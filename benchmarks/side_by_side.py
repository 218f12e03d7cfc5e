"""Two runs side by side on one machine: each run's wall time alone and with a second one started
beside it, under each threading setting, to choose how runs share a machine (README, "Sharing a
machine").

    .venv/bin/python benchmarks/side_by_side.py --steps 6

The run is configs/quickstart.yaml cut to `--steps` optimizer steps, without its evaluations and
export. For each setting: the run alone, then two of it started together; the wall time of each
(start-up included). Settings, each the environment of every run:
- default: as a run starts today (the `threads` option unset: one thread per core);
- passive: OMP_WAIT_POLICY=PASSIVE (OpenMP's idle threads sleep instead of spinning);
- half: `--threads` set to half the cores for each run (lit-posttrain's `threads` option).
Nothing else may run meanwhile: the point is how two runs share the cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "lit-posttrain")
SETTINGS = {
    "default": ({}, []),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    "half": ({}, ["--threads", str(max(1, (os.cpu_count() or 2) // 2))]),
}


def start(out: Path, name: str, steps: int, env: dict, extra: list[str]) -> subprocess.Popen:
    args = [
        CLI, "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--trainer.max_steps", str(steps),
        "--trainer.callbacks", "[]", "--export", "false", "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.name", name, "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip
    with open(out / f"{name}.log", "w") as log:  # the child keeps its own copy of the file
        return subprocess.Popen(args, cwd=out, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)


def timed(processes: list[subprocess.Popen]) -> list[float]:
    """Each process's wall time from now, waiting for all of them."""
    begin, seconds = time.perf_counter(), [None] * len(processes)
    while any(s is None for s in seconds):
        for i, process in enumerate(processes):
            if seconds[i] is None and process.poll() is not None:
                if process.returncode != 0:
                    raise RuntimeError(f"run {i} failed with status {process.returncode}: see its log")
                seconds[i] = time.perf_counter() - begin
        time.sleep(0.2)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--out", default="runs/side_by_side")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for setting in args.settings:
        env, extra = SETTINGS[setting]
        (alone,) = timed([start(out, f"{setting}_alone", args.steps, env, extra)])
        pair = timed([start(out, f"{setting}_pair{i}", args.steps, env, extra) for i in range(2)])
        row = {"setting": setting, "steps": args.steps, "alone_s": round(alone, 1), "pair_s": [round(s, 1) for s in pair],
               "slowdown": round(max(pair) / alone, 2)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(out / "side_by_side.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
