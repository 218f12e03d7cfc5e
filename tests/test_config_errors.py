"""A configuration mistake is told in one line (the key, where it was set, the nearest valid key)
and a hint, not a usage dump and jsonargparse's report of every Union branch it tried."""

import os
from pathlib import Path

import pytest

from lit_posttrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_GRPO = str(ROOT / "configs" / "tiny_grpo.yaml")

# A file written by the test (its name, its YAML), the extra arguments, and the one line expected.
CASES = {
    "method_option_on_the_command_line": (None, ["--model.init_args.group_sise", "4"],
        "model.init_args.group_sise: GRPO takes no option 'group_sise'; did you mean 'group_size'? (on the command line)"),
    "method_option_in_a_file": ("bad.yaml", "model:\n  init_args:\n    group_sise: 4\n",
        "model.init_args.group_sise: GRPO takes no option 'group_sise'; did you mean 'group_size'? (in {file})"),
    "nested_class_option_in_a_file": ("bad.yaml", "model:\n  init_args:\n    engine:\n      init_args:\n        max_new_token: 8\n",
        "model.init_args.engine.init_args.max_new_token: HFEngine takes no option 'max_new_token'; did you mean 'max_new_tokens'? (in {file})"),
    "dataclass_field": ("bad.yaml", "model:\n  init_args:\n    lora:\n      rr: 4\n",
        "model.init_args.lora.rr: LoRA takes no option 'rr'; did you mean 'r'? (in {file})"),
    "trainer_key_in_a_file": ("bad.yaml", "trainer:\n  max_stepz: 4\n",
        "trainer.max_stepz: no such option; did you mean 'trainer.max_steps'? (in {file})"),
    "data_key_on_the_command_line": (None, ["--data.batch_sise", "4"],
        "data.batch_sise: no such option; did you mean 'data.batch_size'? (on the command line)"),
    "wrong_type": (None, ["--model.init_args.group_size", "abc"], "model.init_args.group_size: expected int, got 'abc' (on the command line)"),
    "unknown_class": (None, ["--model.class_path", "lit_posttrain.methods.grpo.GRPOO"],
        "model.class_path: lit_posttrain.methods.grpo has no class 'GRPOO'; did you mean 'GRPO'? (on the command line)"),
    # A check of the method's own, raised while jsonargparse builds it: its message alone.
    "failed_check": (None, ["--model.init_args.group_size", "1"], "GRPO group_size must be at least 2 (advantages compare completions of a prompt), got 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_configuration_mistake_is_one_line(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    name, extra, expected = CASES[case]
    args = ["fit", "--config", TINY_GRPO]
    if name is not None:
        (tmp_path / name).write_text(extra)
        args += ["--config", name]
        extra = []
    with pytest.raises(SystemExit) as stop:
        main([*args, *extra])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = err[err.index("lit-posttrain: error:") :].strip().splitlines()  # (after warnings pytest's own argv causes)
    assert lines[0] == "lit-posttrain: error: " + expected.format(file=name), lines
    assert len(lines) == 2 and "LIT_POSTTRAIN_TRACEBACK=1" in lines[1], lines
    assert case == "failed_check" or lines[1].startswith("(every option: lit-posttrain fit --help"), lines


def test_the_full_report_on_request(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIT_POSTTRAIN_TRACEBACK", "1")
    with pytest.raises(SystemExit):
        main(["fit", "--config", TINY_GRPO, "--model.init_args.group_sise", "4"])
    err = capsys.readouterr().err
    assert "Does not validate against any of the Union subtypes" in err and "usage:" in err


def test_threads_sets_the_runs_cpu_threads_and_refuses_zero(tmp_path, monkeypatch, capsys):
    import torch

    from lit_posttrain.cli import LitPostTrainCLI

    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    try:
        LitPostTrainCLI(args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "1", "--export", "false", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main(["fit", "--config", TINY_GRPO, "--threads", "0"])
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_the_command_lets_idle_threads_sleep_unless_told_otherwise(monkeypatch):
    """OMP_WAIT_POLICY=PASSIVE before torch's OpenMP starts (README, "Sharing a machine"); a
    policy in the environment is kept."""
    from lit_posttrain import cli, launch

    seen = []
    monkeypatch.setattr(cli, "main", lambda: seen.append(os.environ["OMP_WAIT_POLICY"]))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    launch.main()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    launch.main()
    assert seen == ["PASSIVE", "ACTIVE"]
