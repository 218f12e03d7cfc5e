"""Gather the quickstart sweep: every `time_to_accuracy.csv` under the given folders, one row per
run (setting, seed, accuracy curve, final-number curve, time to each threshold, wall time), into a
CSV and a Markdown table, in the order the folders are given.

    .venv/bin/python benchmarks/quickstart_sweep.py runs/sweep/shipped-f32 runs/sweep/hpt20g4-f32 ... \\
        --csv benchmarks/quickstart_sweep.csv

Each folder is one `time_to_accuracy.py --setting NAME --out FOLDER` run; the table is what
benchmarks/QUICKSTART.md shows.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def gather(folders: list[Path]) -> list[dict]:
    rows = []
    for folder in folders:
        with open(folder / "time_to_accuracy.csv") as f:
            rows += list(csv.DictReader(f))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| setting | method | seed | strict accuracy by step (@ s since launch) | final number by step | time to 0.5 (s) | whole run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        curve = ", ".join(point.replace(":", ": ") for point in r["curve"].split())
        final = ", ".join(point.replace(":", ": ") for point in r.get("final_number_curve", "").split()) or "-"
        lines.append(f"| {r['setting']} | {r['method']} | {r['seed']} | {curve} | {final} | {r.get('time_to_0.5_s') or 'not reached'} | {float(r['wall_s']):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--csv", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = gather(args.folders)
    if args.csv:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)
    print(markdown(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
