"""GRPO through the real CLI on the tiny model, with a reward it can learn in seconds."""

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_posttrain.cli import LitPostTrainCLI
from lit_posttrain.methods.grpo import GRPO

ROOT = Path(__file__).resolve().parents[1]
TINY_GRPO = str(ROOT / "configs" / "tiny_grpo.yaml")


def column(cli: LitPostTrainCLI, name: str) -> list[float]:
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        return [float(r[name]) for r in csv.DictReader(f) if r.get(name)]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_grpo_mean_reward_rises_and_weights_change(tiny_model_dir):
    cli = LitPostTrainCLI(args=["fit", "--config", TINY_GRPO])
    reward = column(cli, "train/reward")
    assert len(reward) == 30
    assert sum(reward[:5]) / 5 < 0.35 and sum(reward[-5:]) / 5 > 0.8, reward
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(Path(cli.trainer.log_dir) / "hf_model" / "model.safetensors")
    assert all(not torch.equal(before[k], after[k]) for k in before)
    for name in ("train/reward_std", "train/zero_variance_groups", "train/clip_fraction", "train/completion_length",
                 "train/truncated", "time/generate_s", "time/score_s", "time/loss_forward_s", "time/backward_step_s", "time/sync_s",
                 "train/clip_fraction_low", "train/clip_fraction_high", "train/completion_length_min", "train/completion_length_max",
                 "train/terminated", "train/entropy", "train/grad_norm", "train/lr"):  # fmt: skip
        assert len(column(cli, name)) == 30, name
    assert all(0 < lo <= mean <= hi <= 4 for lo, mean, hi in zip(*(column(cli, f"train/completion_length{s}") for s in ("_min", "", "_max")), strict=True))
    assert all(t + c == pytest.approx(1) for t, c in zip(column(cli, "train/truncated"), column(cli, "train/terminated"), strict=True))
    assert all(x > 0 for x in column(cli, "train/entropy"))
    # Zero once every group's rewards are equal (no advantage, no gradient), not before.
    grad_norm = column(cli, "train/grad_norm")
    assert all(x >= 0 for x in grad_norm) and all(x > 0 for x in grad_norm[:3]), grad_norm
    assert column(cli, "train/lr")[-1] == pytest.approx(cli.model.optimizers().param_groups[0]["lr"])


def test_grpo_with_kl_lora_and_reused_rollouts():
    """8 prompts, 4 a step, rollouts kept for 4 steps: steps 0 and 1 sample every prompt, steps 2
    and 3 reuse them (whatever the second epoch's order), sampling nothing."""
    cli = LitPostTrainCLI(
        args=[
            "fit", "--config", TINY_GRPO, "--trainer.max_steps", "4", "--data.batch_size", "4",
            "--model.init_args.lora", "{}", "--model.init_args.loss.kl_coef", "0.1",
            "--model.init_args.rollouts.every_n_steps", "4", "--data.task.init_args.num_train", "8",
        ]
    )  # fmt: skip
    generated = column(cli, "tokens/generated")
    assert generated[0] > 0 and generated[1] > 0 and generated[2:] == [0.0, 0.0]
    assert {sampled_at for _, sampled_at in cli.model.rollouts._cache.values()} == {0, 1}
    assert len(cli.model.rollouts._cache) == 8
    kl = column(cli, "train/kl")
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 0  # zero at the start, then the policy moves
    assert all(t > 0 for t in column(cli, "tokens/reference"))  # the KL term's forward is counted
    assert all(torch.isfinite(torch.tensor(column(cli, "train/reward"))))


def test_offline_cadence_samples_everything_once_before_training():
    cli = LitPostTrainCLI(
        args=[
            "fit", "--config", TINY_GRPO, "--trainer.max_steps", "3", "--data.task.init_args.num_train", "16",
            "--model.init_args.rollouts", json.dumps({"every_n_steps": None}),
        ]
    )  # fmt: skip
    source = cli.model.rollouts
    assert len(source._cache) == 16
    assert {sampled_at for _, sampled_at in source._cache.values()} == {0}
    # All the sampling is charged to the first step, none to the later ones.
    generated, generate_s = column(cli, "tokens/generated"), column(cli, "time/generate_s")
    assert generated[0] > 0 and generated[1:] == [0.0, 0.0]
    assert generate_s[0] > 0 and generate_s[1:] == [0.0, 0.0]
    assert column(cli, "tokens/prompts")[0] == sum(len(row.prompt_ids) for row in cli.datamodule.train_rows)


def test_group_size_below_two_is_refused():
    with pytest.raises(ValueError, match="group_size must be at least 2"):
        GRPO(model="tiny-random-llama", group_size=1)


def test_loss_parts_are_chosen_by_class_path():
    from lit_posttrain.losses.advantages import GroupCentered
    from lit_posttrain.losses.aggregation import TokenMean
    from lit_posttrain.losses.kl import K1

    cli = LitPostTrainCLI(
        args=[
            "--config", str(ROOT / "configs" / "grpo.yaml"),
            "--model.init_args.loss.advantage", "lit_posttrain.losses.advantages.GroupCentered",
            "--model.init_args.loss.kl_estimator", "lit_posttrain.losses.kl.K1",
            "--model.init_args.loss.sampler_correction", "lit_posttrain.losses.importance.SequenceMaskedIS",
            "--model.init_args.loss.sampler_correction.cap", "5",
            "--model.init_args.loss.stabilization.ratio_c", "3",
        ],
        run=False,
    )  # fmt: skip
    loss = cli.model.loss
    assert isinstance(loss.advantage, GroupCentered) and isinstance(loss.aggregation, TokenMean)
    assert (loss.stabilization.eps_low, loss.stabilization.eps_high, loss.stabilization.ratio_c) == (0.2, 0.28, 3.0)
    assert isinstance(loss.kl_estimator, K1) and type(loss.sampler_correction).__name__ == "SequenceMaskedIS"
    assert loss.sampler_correction.cap == 5.0
