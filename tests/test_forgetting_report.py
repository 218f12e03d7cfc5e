"""benchmarks/forgetting_report.py on runs written by hand: the clustered tests, matched accuracy
interpolated between checkpoints (a crossing exactly at a checkpoint included), the corrected
family of tests, and a rebuild from the per-item folder alone."""

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from clustered import clustered_difference  # noqa: E402
from compare_report import Run  # noqa: E402
from forgetting_report import (  # noqa: E402
    gk,
    main,
    markdown,
    matched_accuracy,
    read_items,
    read_studies,
    study_folders,
    write_items,
)

ITEMS = 40
SETTINGS = SimpleNamespace(model="m", dtype="float32", lora=False, lr=1e-4, warmup_steps=0, seeds=[0, 1], steps=8, batch_size=8,
                           every=4, max_new_tokens=12, eval_examples=100, kl_prompts=2, task_kl_prompts=2, probe_items=None,
                           demonstration="{answer}")  # fmt: skip
METHODS = {m: SimpleNamespace(config=f"configs/{m}.yaml", teacher=None, note="") for m in ("sft", "grpo")}
START = [i % 2 == 0 for i in range(ITEMS)]


def run(method: str, seed: int, accuracy: list[float], lost: list[int]) -> Run:
    """Checkpoints at steps 0, 4, 8; `lost[k]` of the start's right items wrong at checkpoint k."""
    items = [[x and not (i % 2 == 0 and i // 2 < n) for i, x in enumerate(START)] for n in lost]
    curves = {"step": [0, 4, 8], "task_accuracy": accuracy, "gk_accuracy": [sum(x) / ITEMS for x in items], "gk_nll": [1.0, 1.1, 1.2]}
    curves |= {k: [0.0, 0.1 * (seed + 1), 0.2] for k in ("probe_kl", "probe_forward_kl", "task_kl", "task_forward_kl")}
    result = {"curves": curves, "gk_items": items, "memory_gib": [[1, 1.0], [8, 1.0]], "wall_s": 10.0, "fit_s": 9.0, "measure_s": 3.0, "probe_s": 1.0}
    return Run("arithmetic", method, seed, Path("."), [], result, "ok")


RUNS = [
    run("sft", 0, [0.1, 0.3, 0.5], [0, 4, 8]), run("sft", 1, [0.1, 0.5, 0.6], [0, 6, 8]),
    run("grpo", 0, [0.1, 0.2, 0.5], [0, 0, 2]), run("grpo", 1, [0.1, 0.6, 0.7], [0, 1, 1]),
]  # fmt: skip


def test_matched_accuracy_is_interpolated_and_a_crossing_at_a_checkpoint_is_that_checkpoint():
    level, matched, left_out = matched_accuracy({"sft": RUNS[:2], "grpo": RUNS[2:]})
    assert level == 0.5 and left_out == []
    # sft seed 0 reaches 0.5 exactly at checkpoint 2; seed 1 at checkpoint 1; grpo seed 0 at 2; seed 1 a third of the way to 1.
    assert matched["sft"] == [(0, 2.0), (1, 1.0)]
    assert matched["grpo"][0] == (0, 2.0) and matched["grpo"][1][1] == pytest.approx(0.8)
    assert np.array_equal(gk(RUNS[0], 2.0), gk(RUNS[0]))
    expected = 0.2 * gk(RUNS[3], 0) + 0.8 * gk(RUNS[3], 1)
    assert np.allclose(gk(RUNS[3], 0.8), expected)


def test_report_tests_clustered_and_corrected(tmp_path):
    report = markdown(RUNS, SETTINGS, "cmd", METHODS, {"machine": "a CPU", "code": "abc"})
    sft_end = clustered_difference([gk(r) for r in RUNS[:2]], [gk(r, 0) for r in RUNS[:2]])
    assert sft_end.difference == pytest.approx(-8 / ITEMS)
    assert "| sft | 2 |" in report and sft_end.cell() in report
    # 2 ends against start, 2 at matched accuracy, 1 against SFT: five tests corrected together.
    assert "5 tests of the report's claims" in report
    write_items(RUNS, tmp_path / "items", SETTINGS, "cmd", METHODS)
    runs, settings, command, methods, provenance = read_items(tmp_path / "items")
    assert [(r.method, r.seed) for r in runs] == [("sft", 0), ("sft", 1), ("grpo", 0), ("grpo", 1)]
    assert markdown(runs, settings, command, methods, provenance).splitlines()[3:] == \
        markdown(RUNS, SETTINGS, "cmd", METHODS, provenance).splitlines()[3:]  # fmt: skip


def test_a_learning_rate_study_is_reported_with_the_first_and_draws_the_frontier(tmp_path):
    write_items(RUNS, tmp_path / "first", SETTINGS, "cmd one", METHODS)
    arm = SimpleNamespace(config="configs/sft.yaml", teacher=None, note="sft at learning rate 3e-05", lr=3e-5, every=4)
    grpo_arm = SimpleNamespace(config="configs/grpo.yaml", teacher=None, note="", lr=1e-5, every=4)
    arms = [run("sft@3e-05", 0, [0.1, 0.2, 0.3], [0, 1, 2]), run("sft@3e-05", 2, [0.1, 0.2, 0.4], [0, 2, 3]), run("grpo@1e-05", 0, [0.1, 0.5, 0.6], [0, 0, 1])]
    arm_methods = METHODS | {"sft@3e-05": arm, "grpo@1e-05": grpo_arm}
    write_items(arms, tmp_path / "second", SimpleNamespace(**vars(SETTINGS) | {"seeds": [0, 2]}), "cmd two", arm_methods)
    runs, settings, command, methods, _ = read_studies([tmp_path / "first", tmp_path / "second"])
    assert [(r.method, r.seed) for r in runs] == [(r.method, r.seed) for r in RUNS + arms]
    assert settings.seeds == [0, 1, 2] and command == "cmd one ; cmd two" and methods["sft@3e-05"].lr == 3e-5
    report = markdown(runs, settings, command, methods)
    assert "- `sft@3e-05`: learning rate 3e-05, measured every 4 steps" in report and "| sft@3e-05 | 2 |" in report
    # The arm against the SFT arm at the highest accuracy the runs of both with a seed in common
    # reached: sft@3e-05 seed 0's 0.3 (seed 2 has no grpo@1e-05 partner). There sft@3e-05 seed 0
    # (checkpoint 2, step 8) has lost 2 of 40 items and grpo@1e-05 seed 0 (half-way to checkpoint 1: step 2) none:
    # +0.050 for GRPO, the seed they share paired.
    (line,) = [row for row in report.splitlines() if row.startswith("| grpo@1e-05 | sft@3e-05 | 0 | 0.300 | 2.0 / 8.0 |")]
    assert "| +0.000 [+0.000, +0.000] | -0.050 [" in line and "| +0.050 [" in line
    # An arm that learned little is matched at its own level and lowers no other pair's.
    weak = run("opd@1e-05", 0, [0.1, 0.12, 0.2], [0, 0, 0])
    report = markdown([*runs, weak], settings, command, methods | {"opd@1e-05": SimpleNamespace(**vars(grpo_arm) | {"teacher": "sft"})})
    assert line in report.splitlines() and "| opd@1e-05 | sft@3e-05 | 0 | 0.200 | 8.0 / 4.0 |" in report
    main([str(tmp_path / "first"), str(tmp_path / "second"), "--out", str(tmp_path / "report")])
    assert (tmp_path / "report" / "lr_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    main([str(tmp_path / "first"), "--out", str(tmp_path / "one")])
    assert not (tmp_path / "one" / "lr_frontier.png").exists()  # one learning rate a method: no frontier to draw
    write_items(arms, tmp_path / "other", SimpleNamespace(**vars(SETTINGS) | {"steps": 16}), "cmd", arm_methods)
    with pytest.raises(SystemExit, match=r"other: another study's settings \(steps differ"):
        read_studies([tmp_path / "first", tmp_path / "other"])
    with pytest.raises(SystemExit, match="grpo seed 0, grpo seed 1, sft seed 0, sft seed 1 also in an earlier folder"):
        read_studies([tmp_path / "first", tmp_path / "first"])
    # "auto" is compared as the dtype it trained in: float32 on an AVX2-only CPU without a GPU.
    def provenance_of(folder, machine, dtype):
        study = json.loads((folder / "study.json").read_text())
        study["provenance"]["machine"], study["settings"]["dtype"] = machine, dtype
        (folder / "study.json").write_text(json.dumps(study))

    avx2, amx = "AMD EPYC (2 cores, torch CPU capability AVX2, 2 threads), no GPU", "Intel Xeon (2 cores, torch CPU capability AVX512, 2 threads), no GPU"
    write_items(arms, tmp_path / "explicit", SimpleNamespace(**vars(SETTINGS) | {"seeds": [0, 2]}), "cmd", arm_methods)
    shutil.copytree(tmp_path / "first", tmp_path / "auto")
    provenance_of(tmp_path / "auto", avx2, "auto")
    provenance_of(tmp_path / "explicit", amx, "float32")
    assert len(read_studies([tmp_path / "auto", tmp_path / "explicit"])[0]) == len(RUNS + arms)
    provenance_of(tmp_path / "auto", amx, "auto")  # there "auto" is its own (bf16 where native): not comparable
    with pytest.raises(SystemExit, match=r"dtype: trained in float32 against auto on Intel Xeon"):
        read_studies([tmp_path / "auto", tmp_path / "explicit"])
    # A later study may add seeds to a method: its runs join the method's.
    write_items([run("sft", 5, [0.1, 0.3, 0.4], [0, 1, 1])], tmp_path / "seed5", SimpleNamespace(**vars(SETTINGS) | {"seeds": [5]}), "cmd", METHODS)
    runs, settings, *_ = read_studies([tmp_path / "first", tmp_path / "seed5"])
    assert sorted(r.seed for r in runs if r.method == "sft") == [0, 1, 5] and settings.seeds == [0, 1, 5]
    # A folder of study folders stands for them; a folder that is neither is refused.
    (tmp_path / "later").mkdir()
    (tmp_path / "seed5").rename(tmp_path / "later" / "seed5")
    assert study_folders([tmp_path / "first", tmp_path / "later"]) == [tmp_path / "first", tmp_path / "later" / "seed5"]
    with pytest.raises(SystemExit, match="no study.json"):
        study_folders([tmp_path / "report"])


def test_framings_are_reported_against_the_start_in_the_same_framing(tmp_path):
    # The start right on the even items when bare, on the even items but 0 and 2 in German; sft seed
    # 0 loses 8 of them bare and gains 4 odd ones in German; seed 1 alike but loses 6. grpo seed 0
    # scored, unchanged.
    german = [x and i > 2 for i, x in enumerate(START)]

    def framed(lost: int, gained: int) -> dict:
        return {"bare": [x and not (i // 2 < lost) for i, x in enumerate(START)], "german": [x or i in range(1, 2 * gained, 2) for i, x in enumerate(german)]}

    scored = {"builtin:start": {"bare": START, "german": german}, "runs/a/runs/sft/seed0/model": framed(8, 4),
              "/abs/runs/b/runs/sft/seed1/model": framed(6, 4), "runs/a/runs/grpo/seed0/model": framed(0, 0)}  # fmt: skip
    # The scores beside a folder of studies, as benchmarks/forgetting_items_study4 keeps them.
    write_items(RUNS, tmp_path / "study" / "items", SETTINGS, "cmd", METHODS)
    (tmp_path / "study" / "framings.json").write_text(json.dumps({"items": ITEMS, "models": scored}))
    main([str(tmp_path / "study"), "--out", str(tmp_path / "report")])
    report = (tmp_path / "report" / "report.md").read_text()
    table = report[report.index("## The answers' form") :].split("\n\n")[2].splitlines()
    assert table[2] == "| start | | | 0.500 | 0.450 |"
    sft, grpo = table[3].split(" | "), table[4].split(" | ")
    assert sft[:3] == ["| sft", "0 1", "0.55 ± 0.07"] and grpo[:2] == ["| grpo", "0"]
    # sft: bare -(8 + 6) / 2 / 40 = -0.175, German +4 / 40 = +0.100, both seeds alike; grpo: no change, p 1.
    assert sft[3].startswith("-0.175 (p ") and sft[4].startswith("+0.100 (p ") and grpo[3] == "+0.000 (p 1, Holm 1)"
    assert "4 tests" not in report  # its own family: the claims' count is unchanged
