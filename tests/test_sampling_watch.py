"""A run whose completions are cut at max_new_tokens says so once on the console, and its summary
gives the cut share and the reward at the first and last steps."""

import logging
from pathlib import Path

import pytest
import torch

from lit_posttrain.cli import LitPostTrainCLI
from lit_posttrain.rollout.watch import SamplingWatch

TINY_GRPO = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_grpo.yaml")


def test_the_watch_warns_once_above_its_threshold_and_summarises(caplog):
    watch = SamplingWatch(threshold=0.5)
    with caplog.at_level(logging.WARNING):
        watch.update(0, torch.tensor([True, False]), torch.tensor([0.0, 1.0]), max_new_tokens=8)  # 50%: not above
        assert not caplog.records
        for step in (1, 2):
            watch.update(step, torch.tensor([True, True, True, False]), torch.tensor([0.0, 0.0, 0.0, 0.2]), max_new_tokens=8)
    assert len(caplog.records) == 1
    assert "75% of step 1's completions were cut at max_new_tokens = 8" in caplog.records[0].getMessage()
    assert watch.summary(last=2) == [
        "  completions cut at max_new_tokens: 50% at step 0 -> 75% at step 1-2",
        "  reward: 0.500 at step 0 -> 0.050 at step 1-2",
    ]
    with pytest.raises(ValueError, match="truncation_warning is a share of completions"):
        SamplingWatch(0.0)


@pytest.mark.parametrize("threshold", [0.25, 1.0])
def test_a_run_cut_short_says_so_on_the_console(tmp_path, monkeypatch, caplog, capsys, threshold):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lit_posttrain.rollout.watch"):
        LitPostTrainCLI(
            args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "2", "--export", "false",
                  "--model.init_args.truncation_warning", str(threshold)]
        )  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if "were cut at max_new_tokens = 4" in r.getMessage()]
    # The tiny random model rarely stops within 4 tokens: nearly every completion is cut.
    if threshold < 1:
        assert len(warnings) == 1 and "of step 0's completions" in warnings[0]
    else:
        assert warnings == []
    out = capsys.readouterr().out
    assert "completions cut at max_new_tokens: " in out and "  reward: " in out
