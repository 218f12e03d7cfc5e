"""Charts of a run's metrics (reward, accuracy, forgetting) from its `metrics.csv`.

    lit-posttrain-plot runs/lightning_logs/version_3                 # one run: PNGs in its folder
    lit-posttrain-plot runs/a/version_0 runs/b/version_0 --out cmp   # several: a line per run

At the end of `fit` the `Plots` callback writes the same charts into the run folder.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

# Chart groups: (file name, title, metric prefixes shown in it).
GROUPS = (
    ("training.png", "Training", ("train/reward", "train/loss", "train/nll", "train/sft_fraction", "train/kl")),
    ("evaluation.png", "Held-out evaluation", ("eval/",)),
    ("forgetting.png", "Forgetting (against the starting model)", ("forget/",)),
)
SKIPPED = ("time_s", "per_example")


def unit(metric: str) -> str:
    """The y-axis label: what the number is and its unit."""
    name = metric.rsplit("/", 1)[-1]
    if name in ("accuracy", "reward", "truncated", "sft_fraction") or name.startswith("pass@"):
        return f"{name} (fraction, 0-1)"
    if name in ("kl", "nll"):
        return f"{name} (nats per token)"
    if name == "loss":
        return "loss (the method's objective)"
    if name == "completion_length":
        return "completion length (tokens)"
    if name in ("right_to_wrong", "wrong_to_right"):
        return f"{name.replace('_', ' ')} (examples since step 0)"
    return name


def read_metrics(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """`metric -> [(step, value), ...]` from the CSV logger's `metrics.csv`."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: point at a run folder written by the CSV logger")
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            step = int(float(row["step"]))
            for key, value in row.items():
                if key in ("step", "epoch") or not value or key.endswith(SKIPPED):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def _metrics_of_group(series: dict, prefixes: Sequence[str]) -> list[str]:
    metrics = sorted(k for k in series if k.startswith(prefixes) and any(math.isfinite(v) for _, v in series[k]))
    # A method that samples and scores logs its reward, and its loss is a surrogate whose value is
    # not progress (GRPO's is ~0 by construction: the advantages average to zero in each group, a
    # chart on a 1e-8 axis): the reward is charted, the loss not.
    if "train/reward" in metrics and "train/loss" in metrics:
        metrics.remove("train/loss")
    return metrics


def plot_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, labels: Sequence[str] | None = None) -> list[Path]:
    """One PNG per chart group, one panel per metric, one line per run. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    runs = [read_metrics(d) for d in run_dirs]
    labels = list(labels) if labels else [Path(d).name if len(run_dirs) == 1 else str(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, title, prefixes in GROUPS:
        metrics = sorted({m for series in runs for m in _metrics_of_group(series, prefixes)})
        if not metrics:
            continue
        columns = min(3, len(metrics))
        rows = math.ceil(len(metrics) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for series, label in zip(runs, labels, strict=True):
                points = series.get(metric, [])
                if points:
                    steps, values = zip(*points, strict=True)
                    ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3, label=label)
            ax.set_title(metric, fontsize=10)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(unit(metric), fontsize=9)
            ax.grid(alpha=0.3)
            if len(runs) > 1:
                ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        fig.suptitle(title)
        fig.tight_layout()
        path = out_dir / filename
        # Beside its name, then renamed over it: a kill while drawing leaves the previous chart.
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip("."))
        os.replace(tmp, path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lit-posttrain-plot", description="Charts of finished runs' metrics.")
    parser.add_argument("runs", nargs="+", help="run folders holding a metrics.csv")
    parser.add_argument("--out", help="folder for the PNGs (default: the run folder, for a single run)")
    parser.add_argument("--labels", nargs="*", help="one legend label per run (default: the folder names)")
    args = parser.parse_args(argv)
    if args.out is None and len(args.runs) > 1:
        parser.error("--out is required when comparing several runs")
    for path in plot_runs(args.runs, args.out or args.runs[0], args.labels):
        print(path)


if __name__ == "__main__":
    main()
