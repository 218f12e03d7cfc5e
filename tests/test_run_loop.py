"""The benchmarks' shared run loop (benchmarks/compare_report.py: `run_in_order`), with commands
that take a fraction of a second: a failed teacher's student is skipped, every run left without a
result is reported, and the tables are rewritten after each run that ran."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from compare_report import Run, run_in_order  # noqa: E402

TEACHERS = {"sft": None, "opd": "sft", "grpo": None}


def _run(tmp_path: Path, method: str, exit_code: int) -> Run:
    command = [sys.executable, "-c", f"import sys; sys.exit({exit_code})"]
    return Run("arithmetic", method, 0, tmp_path / method, command)


def test_a_failed_teacher_skips_its_student_and_every_missing_run_is_reported(tmp_path, capsys):
    runs = [_run(tmp_path, "sft", 1), _run(tmp_path, "opd", 0), _run(tmp_path, "grpo", 0)]
    written = []
    missing = run_in_order(
        runs, skip_existing=False, summarise=lambda run_dir, wall_s: {"wall_s": wall_s, "accuracy": 0.5},
        teacher_of=TEACHERS.get, label=lambda run: f"{run.method} seed {run.seed}",
        measured=lambda result: f"accuracy {result['accuracy']}", after_each=lambda: written.append([r.status for r in runs]),
    )  # fmt: skip
    assert [r.status for r in runs] == ["failed", "skipped", "ok"]
    assert missing == runs[:2]
    assert runs[2].result["accuracy"] == 0.5 and (tmp_path / "grpo" / "result.json").is_file()
    # After each run that ran (the skipped student writes nothing new).
    assert written == [["failed", "pending", "pending"], ["failed", "skipped", "ok"]]
    out = capsys.readouterr().out
    assert "[2/3] opd seed 0: skipped, its teacher (sft) has no model" in out
    assert "[3/3] grpo seed 0: ok, accuracy 0.5, wall " in out
    assert "2 runs have no result: sft seed 0 (failed), opd seed 0 (skipped)" in out
