"""Time to accuracy on the quickstart task: wall time from launching `lit-posttrain fit` until the
held-out strict greedy accuracy first reaches each threshold, per method and seed.

    .venv/bin/python benchmarks/time_to_accuracy.py                        # quickstart, GRPO and HPT, seeds 0 1 2
    .venv/bin/python benchmarks/time_to_accuracy.py --methods grpo --seeds 0 --out runs/tta_small
    .venv/bin/python benchmarks/time_to_accuracy.py --methods quickstart --config my.yaml --setting mine   # a candidate
    .venv/bin/python benchmarks/time_to_accuracy.py --extra --model.init_args.optim.lr 1e-3   # a setting to try

Each run is a shipped config as a user runs it (`quickstart`: configs/quickstart.yaml, `grpo` and
`hpt`: configs/grpo.yaml and configs/hpt.yaml; `--config` runs another file instead), with the
seed, its Evaluation every `--every` steps, and the export at the end: the clock starts when the
process is launched and includes start-up, model load, every evaluation and the export, as a
user's does. An evaluation is timed when its line ("step N: held_out accuracy X") reaches the
output. Written to --out: `time_to_accuracy.md` (the table, the machine, the command),
`time_to_accuracy.csv` (one row per run: the setting, the accuracy curve with its times, the
final-number curve where the config logs it, the time to each threshold, the whole run's wall
time) and each run's output. benchmarks/QUICKSTART.md gathers the sweep that chose the quickstart.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from compare_report import machine, write_atomically

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"quickstart": "configs/quickstart.yaml", "grpo": "configs/grpo.yaml", "hpt": "configs/hpt.yaml"}
ACCURACY_LINE = re.compile(r"^step (\d+): held_out accuracy ([\d.]+)(?: \(.*final_number ([\d.]+))?")


def run(method: str, config: Path, seed: int, every: int, extra: list[str], out: Path) -> dict:
    run_dir = out / method / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "lit_posttrain.cli", "fit", "--config", str(config),
        "--seed_everything", str(seed), "--trainer.callbacks.every_n_steps", str(every),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(run_dir),
        "--export_to", str(run_dir / "model"), *extra,
    ]  # fmt: skip
    curve = []  # (seconds since launch, step, accuracy)
    final_number = []  # the quickstart's second verifier: the reply's last number is the sum
    start = time.perf_counter()
    with open(run_dir / "output.log", "w", buffering=1) as log:  # line-buffered: readable while it runs
        # Unbuffered: each line is timed when it is written, not when a buffer fills.
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        for line in process.stdout:
            log.write(line)
            match = ACCURACY_LINE.match(line)
            if match:
                curve.append((time.perf_counter() - start, int(match.group(1)), float(match.group(2))))
                if match.group(3):
                    final_number.append(float(match.group(3)))
        code = process.wait()
    wall_s = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{method} seed {seed} failed (exit {code}); see {run_dir / 'output.log'}")
    return {"method": method, "seed": seed, "curve": curve, "wall_s": wall_s, "command": command, "final_number": final_number}


def first_time(curve: list[tuple[float, int, float]], threshold: float) -> tuple[float, int] | None:
    """(seconds, step) of the first evaluation at or above `threshold`; None if never."""
    return next(((t, step) for t, step, accuracy in curve if accuracy >= threshold), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--config", type=Path, help="run this config file instead of the method's shipped one (a sweep's candidate)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.5, 0.7])
    parser.add_argument("--every", type=int, default=10, help="evaluate every this many steps (the clock's resolution)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further `lit-posttrain fit` arguments, for every run")
    parser.add_argument("--setting", default="shipped", help="a name for this run's --config and --extra, carried into every row (a sweep's column)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "time_to_accuracy")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    results = []
    for method in args.methods:
        for seed in args.seeds:
            config = args.config.resolve() if args.config else ROOT / CONFIGS[method]
            result = run(method, config, seed, args.every, args.extra, out)
            reached = [first_time(result["curve"], t) for t in args.thresholds]
            print(f"{method} seed {seed}: " + ", ".join(
                f"{t:g} at {r[0]:.0f} s (step {r[1]})" if r else f"{t:g} not reached" for t, r in zip(args.thresholds, reached, strict=True)
            ) + f"; final {result['curve'][-1][2]:.3f}, whole run {result['wall_s']:.0f} s", flush=True)  # fmt: skip
            results.append(result | {"reached": reached})
    rows = []
    for r in results:
        row = {"setting": args.setting, "extra": shlex.join(args.extra), "method": r["method"], "seed": r["seed"], "wall_s": round(r["wall_s"], 1)}
        for t, reached in zip(args.thresholds, r["reached"], strict=True):
            row[f"time_to_{t:g}_s"] = round(reached[0], 1) if reached else ""
            row[f"step_to_{t:g}"] = reached[1] if reached else ""
        row["curve"] = " ".join(f"{step}:{accuracy:.3f}@{t:.0f}s" for t, step, accuracy in r["curve"])
        row["final_number_curve"] = " ".join(f"{step}:{v:.3f}" for (_, step, _), v in zip(r["curve"], r["final_number"], strict=False))
        rows.append(row)
    with open(out / "time_to_accuracy.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Time to accuracy on the quickstart task",
        "",
        f"- Command: `{shlex.join([os.path.relpath(sys.executable), *(sys.argv if argv is None else [__file__, *argv])])}`",
        f"- Machine: {machine()}",
        "- Clock: from launching `lit-posttrain fit` (start-up, model load, evaluations and export included) to the "
        f"first held-out evaluation (strict greedy accuracy, every {args.every} steps) at or above the threshold.",
        "",
        "| method | seed | " + " | ".join(f"time to {t:g} (s, step)" for t in args.thresholds) + " | final accuracy | whole run (s) |",
        "|---|---|" + "---|" * (len(args.thresholds) + 2),
    ]
    for r in results:
        cells = [f"{reached[0]:.0f} (step {reached[1]})" if reached else "not reached" for reached in r["reached"]]
        lines.append(f"| {r['method']} | {r['seed']} | " + " | ".join(cells) + f" | {r['curve'][-1][2]:.3f} | {r['wall_s']:.0f} |")
    for method in args.methods:
        for t, i in zip(args.thresholds, range(len(args.thresholds)), strict=True):
            times = [r["reached"][i][0] for r in results if r["method"] == method and r["reached"][i]]
            total = sum(1 for r in results if r["method"] == method)
            if times:
                lines.append(f"\n{method}, {t:g}: reached by {len(times)} of {total} seeds, median {statistics.median(times):.0f} s "
                             f"(range {min(times):.0f}-{max(times):.0f} s)")  # fmt: skip
    write_atomically(out / "time_to_accuracy.md", "\n".join(lines) + "\n")
    print(f"table: {out / 'time_to_accuracy.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
