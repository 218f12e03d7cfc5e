"""The tables and charts of benchmarks/compare.py: one record per run in, `results.csv`,
`summary.csv`, `RESULTS.md` and `comparison_<task>.png` out; and the run loop it shares with
benchmarks/forgetting.py (`run_in_order`, `execute`)."""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    """One method, task and seed: its command, and its numbers once it has finished."""

    task: str
    method: str
    seed: int
    run_dir: Path
    command: list[str]
    result: dict[str, float | None] | None = None
    status: str = "pending"  # ok | reused | failed | skipped


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader (or a resumed comparison) sees the old file or the new one, never half of one


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def dtype_args(dtype: str) -> list[str]:
    """`lit-posttrain fit` arguments for a run's weight dtype: float32 weights train in float32, no
    autocast, whatever the machine's default precision (bf16-mixed where bf16 is native)."""
    return ["--model.init_args.dtype", dtype, *(["--trainer.precision", "32-true"] if dtype == "float32" else [])]


def execute(run: Run, skip_existing: bool, summarise) -> None:
    """Run `run.command` into `run.run_dir` (its output in `output.log`) and keep
    `summarise(run_dir, wall_s)` as its result, in `result.json` written when the run has finished.
    With `skip_existing` a finished run whose command is unchanged is reused instead."""
    result_file = run.run_dir / "result.json"
    if skip_existing and result_file.is_file():
        saved = json.loads(result_file.read_text())
        if saved["command"] == run.command:
            run.result, run.status = saved["result"], "reused"
            return
        print(f"  {run.run_dir}: its command changed since it ran; running it again", flush=True)
    shutil.rmtree(run.run_dir, ignore_errors=True)  # a partial run's logs would be appended to
    run.run_dir.mkdir(parents=True)
    start = time.perf_counter()
    with open(run.run_dir / "output.log", "w") as log:
        code = subprocess.run(run.command, stdout=log, stderr=subprocess.STDOUT).returncode
    wall_s = time.perf_counter() - start
    if code != 0:
        run.status = "failed"
        tail = "\n".join((run.run_dir / "output.log").read_text().splitlines()[-15:])
        print(f"  FAILED (exit {code}); last lines of {run.run_dir / 'output.log'}:\n{tail}", flush=True)
        return
    run.result, run.status = summarise(run.run_dir, wall_s), "ok"
    write_atomically(result_file, json.dumps({"command": run.command, "result": run.result}, indent=1))


def run_in_order(
    runs: list[Run],
    skip_existing: bool,
    summarise: Callable[[Path, float], dict],
    teacher_of: Callable[[str], str | None],
    label: Callable[[Run], str],
    measured: Callable[[dict], str],
    after_each: Callable[[], None],
) -> list[Run]:
    """Execute every run in order (teachers come first in `runs`); a run whose teacher (the
    `teacher_of(method)` run of the same task and seed) has no result is skipped. After each, print
    a line with `measured(result)`, the elapsed time and an estimate of what is left, then call
    `after_each()`: the tables or report are written after every run, so that an interrupted study
    still leaves its finished runs written. Returns the runs left without a result."""
    started, timed = time.perf_counter(), []
    for i, run in enumerate(runs, 1):
        name = f"[{i}/{len(runs)}] {label(run)}"
        teacher = teacher_of(run.method)
        if teacher and next(r for r in runs if (r.task, r.method, r.seed) == (run.task, teacher, run.seed)).result is None:
            run.status = "skipped"
            print(f"{name}: skipped, its teacher ({teacher}) has no model", flush=True)
            continue
        run_start = time.perf_counter()
        execute(run, skip_existing, summarise)
        if run.status == "ok":
            timed.append(time.perf_counter() - run_start)
        if run.result is not None:
            remaining = len(runs) - i
            eta = f", ~{remaining * statistics.fmean(timed) / 60:.1f} min left" if timed and remaining else ""
            print(
                f"{name}: {run.status}, {measured(run.result)}, wall {run.result['wall_s']:.0f} s "
                f"(elapsed {(time.perf_counter() - started) / 60:.1f} min{eta})",
                flush=True,
            )
        after_each()
    missing = [r for r in runs if r.result is None]
    if missing:
        print(f"{len(missing)} runs have no result: " + ", ".join(f"{label(r)} ({r.status})" for r in missing))
    return missing


# (result key, Markdown header, decimals) of the table's columns, in order; PASS_AT_K_END stands
# for the largest k evaluated.
COLUMNS = (
    ("accuracy_start", "held-out accuracy, start", 3),
    ("accuracy_end", "held-out accuracy, end", 3),
    ("PASS_AT_K_END", "pass@k, end", 3),
    ("right_to_wrong", "held-out right-to-wrong", 1),
    ("kl_end", "KL to start (nats/token)", 4),
    ("probe_accuracy_end", "GK probe accuracy, end", 3),
    ("probe_accuracy_change", "GK probe accuracy change", 3),
    ("probe_right_to_wrong", "GK right-to-wrong", 1),
    ("wall_s", "wall time (s)", 0),
    ("train_s", "training time (s)", 0),
    ("tokens_generated", "tokens generated", 0),
    ("tokens_trained", "tokens trained", 0),
    ("tokens_processed", "tokens processed", 0),
)


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def cell(values: list[float], decimals: int) -> str:
    """`mean ± std` over seeds; one seed: its value."""
    if not values:
        return "-"
    s = stats(values)
    mean = f"{s['mean']:,.{decimals}f}"
    return mean if s["std"] is None else f"{mean} ± {s['std']:,.{decimals}f}"


def values_of(runs: list[Run], key: str | None) -> list[float]:
    return [r.result[key] for r in runs if r.result is not None and r.result.get(key) is not None]


def pass_at_k_key(runs: list[Run]) -> str | None:
    """The largest k evaluated, as its `pass@k_end` result key."""
    keys = {k for run in runs if run.result for k in run.result if re.fullmatch(r"pass@\d+_end", k)}
    return max(keys, key=lambda k: int(k[5:-4]), default=None)


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        cpu = names[0] if names else cpu
    # The vector unit decides much of the speed, and the weights' dtype under `auto` (bf16 needs AVX512-BF16 or AMX).
    cpu += f" ({os.cpu_count()} cores, torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    packages = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "lightning"))
    return f"{cpu}, {gpu}; Python {platform.python_version()}, {packages}; {platform.platform()}"


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def write_tables(runs: list[Run], out: Path, setup: list[str], notes: list[str]) -> None:
    """`results.csv` (a row per finished run), `summary.csv` (a row per task and method) and
    `RESULTS.md`: `setup` lines under the header, a table per task, then the column `notes`."""
    done = [run for run in runs if run.result is not None]
    keys = list(dict.fromkeys(k for run in done for k in run.result))  # in the order the runs report them
    per_run = [{"task": r.task, "method": r.method, "seed": r.seed, **r.result, "run_dir": str(r.run_dir)} for r in done]
    write_csv(out / "results.csv", ["task", "method", "seed", *keys, "run_dir"], per_run)
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.method), []).append(run)
    summary = []
    for (task, method), group in groups.items():
        finished = [r for r in group if r.result is not None]
        if finished:
            row = {"task": task, "method": method, "seeds": " ".join(str(r.seed) for r in finished)}
            for key in keys:
                row |= {f"{key}_{name}": v for name, v in stats(values_of(finished, key)).items()}
            summary.append(row)
    fields = ["task", "method", "seeds", *(f"{k}_{s}" for k in keys for s in ("mean", "std", "min", "max"))]
    write_csv(out / "summary.csv", fields, summary)
    write_atomically(out / "RESULTS.md", markdown(groups, setup, notes))


def markdown(groups: dict[tuple[str, str], list[Run]], setup: list[str], notes: list[str]) -> str:
    lines = [
        "# Method comparison",
        "",
        f"Written by `benchmarks/compare.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; rerun its command to refresh it.",
        "",
        *setup,
        f"- Machine: {machine()}",
        f"- Code: commit {git_revision()}",
        "",
        "Cells: mean ± standard deviation over the seeds that finished (one seed: its value). Per seed: "
        "`results.csv`; mean, std, min and max: `summary.csv`.",
    ]
    for task in dict.fromkeys(task for task, _ in groups):
        task_runs = [run for (t, _), group in groups.items() if t == task for run in group]
        pass_key = pass_at_k_key(task_runs)
        headers = [h.replace("pass@k", pass_key[:-4]) if pass_key else h for _, h, _ in COLUMNS]
        lines += ["", f"## Task `{task}`", "", f"![comparison](comparison_{task}.png)", ""]
        lines += ["| method | seeds | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(headers)]
        for (t, method), group in groups.items():
            if t == task:
                cells = [cell(values_of(group, pass_key if key == "PASS_AT_K_END" else key), d) for key, _, d in COLUMNS]
                finished = sum(run.result is not None for run in group)
                lines.append(f"| {method} | {finished} | " + " | ".join(cells) + " |")
    lines += temperature_tables(groups)
    lines += ["", "## Methods and column notes", "", *notes]
    missing = [run for group in groups.values() for run in group if run.status in ("failed", "skipped")]
    if missing:
        lines += ["", "## Runs without results", ""]
        lines += [f"- {r.task} / {r.method} / seed {r.seed}: {r.status}, see `{r.run_dir / 'output.log'}`" for r in missing]
    return "\n".join(lines) + "\n"


def temperature_tables(groups: dict[tuple[str, str], list[Run]]) -> list[str]:
    """Per task and method that swept sampling temperatures: accuracy (pass@1) at each, before and
    after training, beside greedy."""
    lines = []
    for (task, method), group in groups.items():
        keys = {k for run in group if run.result for k in run.result}
        temperatures = sorted({float(m.group(1)) for k in keys if (m := re.fullmatch(r"pass@1_T([\d.]+)_start", k))})
        if not temperatures:
            continue
        names = [f"{t:g}" for t in temperatures]
        lines += ["", f"### `{task}`, `{method}`: accuracy by sampling temperature", ""]
        lines += ["| model | greedy | " + " | ".join(f"T={n}" for n in names) + " |", "|---|---|" + "---|" * len(names)]
        for when, label in (("start", "before training (the starting model)"), ("end", f"after {method}")):
            greedy = cell(values_of(group, f"accuracy_{when}"), 3)
            lines.append(f"| {label} | {greedy} | " + " | ".join(cell(values_of(group, f"pass@1_T{n}_{when}"), 3) for n in names) + " |")
        lines += ["", "T=t: the mean accuracy of the evaluation's samples per prompt at temperature t (pass@1); greedy: T -> 0."]
    return lines


def write_charts(runs: list[Run], out: Path) -> list[Path]:
    """Per task: one panel per measure, a bar per method at the mean over seeds, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    from lit_posttrain.plots import unit

    written = []
    for task in dict.fromkeys(run.task for run in runs):
        task_runs = [r for r in runs if r.task == task and r.result is not None]
        if not task_runs:
            continue
        methods = list(dict.fromkeys(r.method for r in task_runs))
        pass_key = pass_at_k_key(task_runs)
        pass_name = pass_key[:-4] if pass_key else "pass@k"
        panels = [  # (result key, title, y label, the key of the value before training, drawn dashed)
            ("accuracy_end", "held-out greedy accuracy", unit("accuracy"), "accuracy_start"),
            (pass_key, f"held-out {pass_name}", unit(pass_name), pass_key and f"{pass_name}_start"),
            ("right_to_wrong", "held-out right-to-wrong", unit("right_to_wrong"), None),
            ("kl_end", "KL(policy || start) on probe prompts", unit("kl"), None),
            ("probe_accuracy_end", "general-knowledge probe accuracy", unit("accuracy"), "probe_accuracy_start"),
            ("wall_s", "wall time of the run", "seconds", None),
        ]
        fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), squeeze=False)
        for ax, (key, title, ylabel, start_key) in zip(axes.flat, panels, strict=True):
            for i, method in enumerate(methods):
                values = values_of([r for r in task_runs if r.method == method], key)
                if values:
                    ax.bar(i, statistics.fmean(values), color=f"C{i}", alpha=0.6)
                    ax.scatter([i] * len(values), values, color="black", s=14, zorder=3)
            starts = values_of(task_runs, start_key)
            if starts:
                ax.axhline(statistics.fmean(starts), color="gray", linestyle="--", linewidth=1, label="before training")
                ax.legend(fontsize=8)
            ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=9)
            ax.set_title(title, fontsize=10)
            ax.set_ylabel(ylabel, fontsize=9)
            ax.set_ylim(bottom=0)  # every measure here is non-negative
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"{task}: bars are the mean over seeds, dots the seeds")
        fig.tight_layout()
        path = out / f"comparison_{task}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
