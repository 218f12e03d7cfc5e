"""benchmarks/compare.py end to end in its smoke settings: methods through the real CLI on the
tiny model, then the tables and charts; and a resumed comparison reusing finished runs."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # four CLI processes: about a minute on 2 cores

ROOT = Path(__file__).resolve().parents[1]
# The comparison's machinery, not each method (every shipped config parses in tests/test_cli.py,
# every method trains in tests/test_methods.py): a teacher run before its student (sft -> opd_sft),
# a method that samples (grpo) beside one that does not, the temperature sweep (sept_online).
# Each run more is ~12 s of CPU on two cores.
METHODS = ["sft", "grpo", "opd_sft", "sept_online"]
# Numbers every method must have, each finite: accuracy, pass@k, forgetting, time.
FINITE = [
    "steps", "accuracy_start", "accuracy_end", "pass@4_end", "right_to_wrong", "kl_end",
    "probe_accuracy_start", "probe_accuracy_end", "probe_accuracy_change", "probe_right_to_wrong",
    "wall_s", "train_s", "measure_s",
]  # fmt: skip


def compare(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--smoke", "--out", str(out), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.benchmark
def test_smoke_comparison_tabulates_every_method_and_resumes(tmp_path):
    compare(tmp_path, "--methods", *METHODS)

    runs = read_csv(tmp_path / "results.csv")
    assert sorted(r["method"] for r in runs) == sorted(METHODS)  # one seed: one row per method
    for run in runs:
        for key in FINITE:
            assert math.isfinite(float(run[key])), (run["method"], key, run[key])
        assert float(run["steps"]) == 2
        assert 0.0 <= float(run["accuracy_end"]) <= 1.0
        assert float(run["kl_end"]) >= 0.0
    by_method = {r["method"]: r for r in runs}
    assert float(by_method["grpo"]["tokens_generated"]) > 0
    assert float(by_method["sft"]["tokens_trained"]) > 0
    assert by_method["sft"]["tokens_generated"] == ""  # SFT samples nothing: blank, not 0
    assert all(float(r["tokens_processed"]) >= float(r["tokens_trained"]) > 0 for r in runs)
    assert float(by_method["opd_sft"]["tokens_teacher"]) > 0 and by_method["grpo"]["tokens_teacher"] == ""
    # The start is measured once per seed (SePT online's temperature sweep once more) and read by the
    # others: every method reports the same starting numbers.
    assert len({(r["accuracy_start"], r["pass@4_start"], r["probe_accuracy_start"]) for r in runs}) == 1
    cached = sorted(p.stem.split("-")[0] for p in (tmp_path / "baselines").rglob("*.json"))
    assert cached == ["evaluation", "evaluation", "forgetting"], cached
    # SePT online sweeps temperatures, before training (the untrained model) and after.
    for when in ("start", "end"):
        assert 0 <= float(by_method["sept_online"][f"pass@1_T0.25_{when}"]) <= 1

    summary = read_csv(tmp_path / "summary.csv")
    assert sorted(r["method"] for r in summary) == sorted(METHODS)
    assert all(math.isfinite(float(r["accuracy_end_mean"])) for r in summary)

    table = (tmp_path / "RESULTS.md").read_text()
    assert "- Machine:" in table and "--smoke" in table
    for method in METHODS:
        assert f"| {method} | 1 |" in table
    assert "`sept_online`: accuracy by sampling temperature" in table and "| T=0.25 |" in table
    chart = tmp_path / "comparison_arithmetic.png"
    assert chart.read_bytes().startswith(b"\x89PNG")

    # A finished run with an unchanged command is reused, not run again.
    result = tmp_path / "runs" / "arithmetic" / "sft" / "seed0" / "result.json"
    written = result.stat().st_mtime_ns
    again = compare(tmp_path, "--skip-existing", "--methods", "sft", "grpo")
    assert again.stdout.count(": reused,") == 2, again.stdout
    assert result.stat().st_mtime_ns == written
    assert sorted(r["method"] for r in read_csv(tmp_path / "results.csv")) == ["grpo", "sft"]
