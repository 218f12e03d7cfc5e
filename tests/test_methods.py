"""Every method through the real CLI on the tiny model: a few steps, finite losses, weights that
move; the class_path swap between all six; each method's own start-up checks and hand values."""

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lit_posttrain.cli import LitPostTrainCLI
from lit_posttrain.methods.hpt import HPT, route_to_sft
from lit_posttrain.methods.opd import OPD
from lit_posttrain.methods.sept import SePT

ROOT = Path(__file__).resolve().parents[1]
TINY_GRPO = str(ROOT / "configs" / "tiny_grpo.yaml")
METHODS = {
    "sft": ["--model.class_path", "lit_posttrain.methods.sft.SFT"],
    "grpo": [],
    "opd": ["--model.class_path", "lit_posttrain.methods.opd.OPD", "--model.init_args.teacher", "tiny-random-llama:1"],
    "otr": ["--model.class_path", "lit_posttrain.methods.otr.OTR", "--model.init_args.k", "64"],
    "sept": ["--model.class_path", "lit_posttrain.methods.sept.SePT", "--model.init_args.start_temperature", "0.6"],
    "hpt": ["--model.class_path", "lit_posttrain.methods.hpt.HPT"],
}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run(*args: str) -> LitPostTrainCLI:
    return LitPostTrainCLI(args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "3", *args])


def logged(cli: LitPostTrainCLI) -> list[dict]:
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


# What only one method's step logs (GRPO: none of these): the step that ran is the method's own.
ONLY_BY = {
    "sft": "train/tokens", "opd": "train/reverse_kl", "otr": "train/sample_hit_rate",
    "sept": "train/sampling_temperature", "hpt": "train/sft_fraction",
}  # fmt: skip


@pytest.mark.parametrize("method", list(METHODS))
def test_switching_class_path_trains_every_method(method, tiny_model_dir):
    cli = run(*METHODS[method])
    assert type(cli.model).__name__.lower() == method
    assert cli.trainer.global_step == 3
    loss = [float(r["train/loss"]) for r in logged(cli) if r.get("train/loss")]
    assert len(loss) == 3 and all(math.isfinite(x) for x in loss)
    values = [float(v) for row in logged(cli) for k, v in row.items() if v and k.startswith("train/")]
    assert all(math.isfinite(x) for x in values)
    keys = {k for row in logged(cli) for k, v in row.items() if v}
    assert {m for m, key in ONLY_BY.items() if key in keys} == ({method} if method in ONLY_BY else set()), keys
    assert method != "grpo" or "train/clip_fraction" in keys
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(Path(cli.trainer.log_dir) / "hf_model" / "model.safetensors")
    assert all(not torch.equal(before[k], after[k]) for k in before), "every weight trains in full fine-tuning"
    trained = cli.model.policy.state_dict()
    assert all(torch.equal(trained[k], after[k]) for k in after), "the export is the trained policy"


@pytest.mark.parametrize("method", ["grpo", "opd", "sept", "hpt"])
def test_every_on_policy_method_takes_several_steps_per_rollout_batch_through_the_cli(method):
    """ppo_epochs 2 x mini_batches 2 from the command line: 4 optimizer steps a batch, metrics
    logged once a batch, pi_old's pass counted where the loss divides by it (not SePT's NLL)."""
    cli = run(*METHODS[method], "--model.init_args.ppo_epochs", "2", "--model.init_args.mini_batches", "2", "--trainer.max_steps", "8")
    assert cli.trainer.global_step == 8
    assert len(column(cli, "train/loss")) == 2
    assert all(math.isfinite(x) for x in column(cli, "train/loss"))
    assert (len(column(cli, "tokens/pi_old")) == 2) is (method != "sept")


def column(cli: LitPostTrainCLI, name: str) -> list[float]:
    return [float(r[name]) for r in logged(cli) if r.get(name)]


def test_token_counts_are_what_each_forward_ran_on():
    # 16 training prompts, 8 a step (tiny_grpo.yaml): 2 steps are one epoch, each prompt once.
    epoch = ["--data.task.init_args.num_train", "16", "--trainer.max_steps", "2"]
    sft = run(*METHODS["sft"], *epoch)
    rows = sft.datamodule.train_rows
    assert sum(column(sft, "tokens/trained")) == sum(len(r.prompt_ids) + len(r.completion_ids) for r in rows)
    assert all(t > 0 for t in column(sft, "time/loss_forward_s") + column(sft, "time/backward_step_s"))

    # Every row trained: the loss forward runs each prompt once and every sampled token.
    grpo = run(*epoch, "--model.init_args.skip_zero_advantage", "false")
    prompts, generated, trained = (column(grpo, f"tokens/{k}") for k in ("prompts", "generated", "trained"))
    assert sum(prompts) == sum(len(r.prompt_ids) for r in rows)
    assert len(trained) == 2 and trained == [p + g for p, g in zip(prompts, generated, strict=True)]
    assert all(g > 0 for g in generated)

    # OPD's teacher scores what the student trains on: each prompt once, plus the completions.
    opd = run(*METHODS["opd"], "--trainer.max_steps", "2")
    prompts, generated = column(opd, "tokens/prompts"), column(opd, "tokens/generated")
    expected = [p + g for p, g in zip(prompts, generated, strict=True)]
    assert column(opd, "tokens/teacher") == expected and column(opd, "tokens/trained") == expected


def test_every_method_trains_only_its_lora_adapters(tiny_model_dir):
    """Two steps with LoRA: the base weights are the start's, and the adapters moved (peft starts
    lora_B at zero) wherever the loss had a gradient: always, except GRPO's when every group's
    rewards were equal (zero advantage)."""
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    for method, args in METHODS.items():
        cli = run(*args, "--model.init_args.lora", "{}", "--trainer.max_steps", "2")
        assert cli.trainer.global_step == 2, method
        params = dict(cli.model.policy.named_parameters())
        for name, p in params.items():
            if "lora_" not in name:  # base_model.model.<name>, LoRA-wrapped ones as <...>.base_layer.<...>
                original = name.removeprefix("base_model.model.").replace(".base_layer", "")
                assert torch.equal(p.detach(), start[original]), (method, name)
        adapters_moved = any(p.abs().sum() > 0 for name, p in params.items() if "lora_B" in name)
        no_signal = method == "grpo" and all(float(r["train/zero_variance_groups"]) == 1 for r in logged(cli) if r.get("train/zero_variance_groups"))
        assert adapters_moved or no_signal, method


@pytest.mark.parametrize(
    ("solved", "gamma", "to_sft"),
    [(0, 0.0, True), (1, 0.0, False), (2, 2 / 8, True), (3, 2 / 8, False), (2, 0.2, False), (8, 1.0, True)],
)
def test_hpt_gate_at_its_boundary(solved, gamma, to_sft):
    reward_B = torch.tensor([1.0] * solved + [0.0] * (8 - solved) + [1.0] * 8)
    group_B = torch.tensor([0] * 8 + [1] * 8)
    assert route_to_sft(reward_B, group_B, gamma).tolist() == [to_sft, gamma == 1.0]


def test_hpt_partial_credit_is_not_solved():
    assert route_to_sft(torch.tensor([0.5, 0.5]), torch.tensor([0, 0]), gamma=0.0).tolist() == [True]
    assert route_to_sft(torch.tensor([0.5, 0.5]), torch.tensor([0, 0]), gamma=0.0, solved_threshold=0.5).tolist() == [False]


@pytest.mark.parametrize(("gamma", "pattern", "sft_fraction"), [(1.0, r"\d", 1.0), (0.0, ".*", 0.0)])
def test_hpt_all_sft_or_all_rl_batches_are_finite(gamma, pattern, sft_fraction):
    cli = run(
        *METHODS["hpt"], "--model.init_args.gamma", str(gamma),
        "--data.task.init_args.verifier.init_args.pattern", pattern,
    )  # fmt: skip
    rows = [r for r in logged(cli) if r.get("train/sft_fraction")]
    assert [float(r["train/sft_fraction"]) for r in rows] == [sft_fraction] * 3
    assert all(math.isfinite(float(r["train/rows_trained"])) for r in rows)
    assert all(torch.isfinite(p).all() for p in cli.model.policy.parameters())


def test_methods_that_need_demonstrations_refuse_a_task_without_them(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n{"prompt": "What is 2 + 2?", "answer": "4"}\n')
    for method in ("sft", "otr", "hpt"):
        with pytest.raises(ValueError, match="trains on demonstrations"):
            run(*METHODS[method], "--data.task", "lit_posttrain.data.files.FileTask", "--data.task.train", str(prompts),
                "--data.task.eval_fraction", "0.5")  # fmt: skip


def test_opd_needs_a_teacher_and_runs_the_full_vocabulary_jsd():
    with pytest.raises(ValueError, match="OPD needs a teacher"):
        OPD(model="tiny-random-llama")
    cli = run(*METHODS["opd"], "--model.init_args.estimator", "lit_posttrain.methods.opd.FullVocabJSD",
              "--model.init_args.estimator.beta", "0.5")  # fmt: skip
    jsd = [float(r["train/jsd"]) for r in logged(cli) if r.get("train/jsd")]
    assert len(jsd) == 3 and all(x > 0 for x in jsd)


def test_opd_reverse_kl_is_zero_when_the_teacher_is_the_student(tiny_model_dir):
    cli = run(*METHODS["opd"][:-1], tiny_model_dir, "--trainer.max_steps", "1")
    (kl,) = [float(r["train/reverse_kl"]) for r in logged(cli) if r.get("train/reverse_kl")]
    assert kl == pytest.approx(0.0, abs=1e-5)


def test_sept_refuses_sampling_hotter_than_training_or_equal_throughout():
    with pytest.raises(ValueError, match="exceeds the training temperature"):
        SePT(model="tiny-random-llama", start_temperature=1.2)
    with pytest.raises(ValueError, match="exceeds the training temperature"):
        SePT(model="tiny-random-llama", start_temperature=0.6, end_temperature=1.0, train_temperature=0.8)
    with pytest.raises(ValueError, match="expected gradient"):
        SePT(model="tiny-random-llama", start_temperature=1.0)


def test_sept_temperature_schedule_hand_computed():
    sept = SePT(model="tiny-random-llama", start_temperature=0.6, ramp_fraction=0.5)
    assert sept.sampling_temperature(0, 100) == pytest.approx(0.6)
    assert sept.sampling_temperature(25, 100) == pytest.approx(0.8)
    assert sept.sampling_temperature(50, 100) == pytest.approx(1.0)
    assert sept.sampling_temperature(90, 100) == pytest.approx(1.0)


def test_sept_online_refreshes_and_offline_samples_once():
    online = run(*METHODS["sept"], "--trainer.max_steps", "4")
    temperatures = [float(r["train/sampling_temperature"]) for r in logged(online) if r.get("train/sampling_temperature")]
    assert temperatures[0] == pytest.approx(0.6) and temperatures == sorted(temperatures) and temperatures[-1] > 0.6
    offline = run(*METHODS["sept"], "--trainer.max_steps", "4", "--model.init_args.rollouts", json.dumps({"every_n_steps": None}))
    temperatures = [float(r["train/sampling_temperature"]) for r in logged(offline) if r.get("train/sampling_temperature")]
    assert temperatures == [pytest.approx(0.6)] * 4  # every sample came from the start, before training


def test_otr_can_force_the_target_into_its_samples():
    cli = run(*METHODS["otr"], "--model.init_args.force_target", "true", "--model.init_args.k", "2")
    hit_rate = [float(r["train/sample_hit_rate"]) for r in logged(cli) if r.get("train/sample_hit_rate")]
    assert all(h >= 0.5 for h in hit_rate)  # at least one of the 2 samples is the target, at every position


def test_otr_scores_the_same_tokens_as_sft():
    # Same weights, same first batch: the NLL OTR logs must be SFT's, position for position.
    nll = {}
    for method in ("sft", "otr"):
        cli = run(*METHODS[method], "--trainer.max_steps", "1", "--data.shuffle", "false")
        (nll[method],) = [float(r["train/nll"]) for r in logged(cli) if r.get("train/nll")]
    assert nll["otr"] == pytest.approx(nll["sft"], rel=1e-5)


def test_hpt_pools_each_sides_metrics_over_its_prompts():
    module = HPT(model="tiny-random-llama", lora=None)
    module._trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
    assert module._pooled({"b": torch.tensor(2.0), "a": torch.tensor(0.5)}, 3) == {"a": 0.5, "b": 2.0}
    # A side no prompt went to is left out, NaN included, rather than logged as 0 or NaN.
    assert module._pooled({"sft_nll": torch.tensor(float("nan"))}, 0) == {}
