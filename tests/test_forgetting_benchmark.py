"""benchmarks/forgetting.py end to end in its smoke settings: methods through the real CLI on the
tiny model, a teacher before its student, curves at every checkpoint, the paired tests' report,
and a resumed study reusing finished runs."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # two CLI processes: under a minute on 2 cores

ROOT = Path(__file__).resolve().parents[1]
# A teacher and its student (Self-SFT's `Reward` advantage is tested in test_policy_gradient_loss).
METHODS = ["sft", "opd"]


def study(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "benchmarks" / "forgetting.py"), "--smoke", "--out", str(out), "--methods", *METHODS, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def result_of(method: str, out: Path | None = None) -> dict:
    return json.loads((out / "runs" / method / "seed0" / "result.json").read_text())["result"]


@pytest.mark.benchmark
def test_smoke_study_measures_curves_and_writes_the_paired_report_and_resumes(tmp_path):
    study(tmp_path)

    with open(tmp_path / "checkpoints.csv") as f:
        rows = list(csv.DictReader(f))
    # 4 steps measured every 2: before training, at step 2 and at step 4, for each method.
    assert sorted((r["method"], int(r["step"])) for r in rows) == sorted((m, s) for m in METHODS for s in (0, 2, 4))
    for row in rows:
        kls = [float(row[k]) for k in ("probe_kl", "probe_forward_kl", "task_kl", "task_forward_kl")]
        assert all(kl >= 0 for kl in kls) and (int(row["step"]) > 0 or max(kls) < 1e-6)
        assert 0 <= float(row["task_accuracy"]) <= 1 and 0 <= float(row["gk_accuracy"]) <= 1
    for method in METHODS:
        result = result_of(method, tmp_path)
        assert [len(items) for items in result["gk_items"]] == [16, 16, 16]  # each item's right or wrong, each checkpoint
        assert [step for step, _ in result["memory_gib"]] == [1, 2, 3, 4]
        assert result["measure_s"] > 0 and result["probe_s"] > 0
    assert (tmp_path / "runs" / "sft" / "seed0" / "model" / "config.json").is_file()  # the teacher's model, for opd
    assert not (tmp_path / "runs" / "opd" / "seed0" / "model").exists()  # no one else exports
    report = (tmp_path / "report.md").read_text()
    for section in ("## At the end of training", "## At matched task accuracy", "## Each method against SFT",
                    "## Distillation: `opd` from the over-trained `sft` model", "## Which KL predicts the GK drop",
                    "## Every test above, corrected for their number", "## Memory and cost"):  # fmt: skip
        assert section in report, section
    for png in ("frontier.png", "curves.png", "memory.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


    again = study(tmp_path, "--skip-existing")
    assert again.stdout.count(": reused,") == len(METHODS)

    # The per-item results alone rebuild the same report: the runs' folders are not needed.
    saved = json.loads((tmp_path / "items" / "sft" / "seed0.json").read_text())["result"]
    assert [len(nll) for nll in saved["gk_nll_items"]] == [16, 16, 16] and saved["gk_items"] == result_of("sft", tmp_path)["gk_items"]
    shutil.rmtree(tmp_path / "runs")
    rebuilt = tmp_path / "rebuilt"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "forgetting_report.py"), str(tmp_path / "items"), "--out", str(rebuilt)], check=True, timeout=300)
    report = (tmp_path / "report.md").read_text()  # the resumed study's (its command has --skip-existing)
    assert (rebuilt / "report.md").read_text().splitlines()[3:] == report.splitlines()[3:]  # all but the date it was written
    assert (rebuilt / "checkpoints.csv").read_text() == (tmp_path / "checkpoints.csv").read_text()


def test_learning_rate_arms_take_their_own_rate_and_cadence(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import forgetting

    args, settings = forgetting.parse_args(["--frontier", "grpo=1e-5,3e-5", "sft=3e-5", "--methods", "sft", "--frontier-every", "2"])
    assert list(args.arms) == ["grpo@1e-05", "grpo@3e-05", "sft@3e-05"] and args.methods == ["sft"]
    specs = forgetting.METHODS | args.arms
    for method, lr, every in (("grpo@3e-05", "3e-05", "2"), ("sft", str(settings.lr), str(settings.every))):
        command = forgetting.run_command(settings, method, Path("task.yaml"), 0, Path("run"), None, False, Path("b"), specs)
        assert command[command.index("--model.init_args.optim.lr") + 1] == lr
        assert [command[i + 1] for i, arg in enumerate(command) if arg == "--trainer.callbacks.every_n_steps"] == [every, every]
        assert command[command.index("--config") + 1].endswith(specs[method].config)
    args, _ = forgetting.parse_args(["--frontier", "opd=1e-5", "--methods", "sft"])
    assert args.arms["opd@1e-05"].teacher == "sft" and args.arms["opd@1e-05"].lr == 1e-5
    for bad, message in ((["--frontier", "opd=1e-5", "--methods", "grpo"], "opd@1e-05's teacher is the sft model"), (["--frontier", "offline_self_sft=1e-5"], "drawn once"),
                         (["--frontier", "sft=fast"], "'fast' is not a learning rate"),
                         (["--frontier", "sft=0"], "must be positive"), (["--frontier", "dpo=1e-5"], "expected METHOD=LR"), (["--methods"], "nothing to run")):  # fmt: skip
        with pytest.raises(SystemExit):
            forgetting.parse_args(bad)
        assert message in capsys.readouterr().err
