"""Two CPU processes under DDP and under FSDP2 train to the same weights, with the same losses, as
one process on the same global batch; every method runs sharded.

Each run goes through the real `lit-posttrain` command, whose launcher starts the second process.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "lit-posttrain")
STRATEGIES = {
    "ddp": ["--trainer.strategy", "ddp"],
    "fsdp": ["--config", str(ROOT / "configs" / "strategies" / "fsdp_cpu2.yaml")],
}


def _fit(workdir: Path, config: str, *extra: str) -> tuple[dict, list[float]]:
    """Train through the CLI in `workdir`; the exported weights and the logged loss of each step."""
    workdir.mkdir()
    args = [CLI, "fit", "--config", str(ROOT / "configs" / config), "--export_to", str(workdir / "model"), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = workdir.glob("runs/lightning_logs/version_*/metrics.csv")
    with open(metrics) as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    return load_file(workdir / "model" / "model.safetensors"), losses


def _train(tmp_path: Path, name: str, config: str, global_batch: int, devices: int, *extra: str):
    args = [
        "--data.batch_size", str(global_batch // devices), "--data.shuffle", "false", "--trainer.max_steps", "3",
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--seed_everything", "3",
        "--model.init_args.lora", "{}", "--model.init_args.lora.merge_on_save", "true", *extra,
    ]  # fmt: skip
    return _fit(tmp_path / name, config, *args)


CONFIGS = {"sft": ("tiny.yaml", []), "grpo": ("tiny_grpo.yaml", ["--data.task.init_args.num_train", "32"])}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The single-process run of each config, trained once for both strategies."""
    runs = {}

    def run(method: str):
        if method not in runs:
            config, extra = CONFIGS[method]
            runs[method] = _train(tmp_path_factory.mktemp(method), "one", config, 8, 1, *extra)
        return runs[method]

    return run


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("method", list(CONFIGS))
def test_two_processes_match_one(tmp_path, method, strategy, one_process, tiny_model_dir):
    one, one_losses = one_process(method)
    config, extra = CONFIGS[method]
    two, two_losses = _train(tmp_path, "two", config, 8, 2, *STRATEGIES[strategy], *extra)
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(one[k], start[k]) for k in one), "training moved the weights"
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), name
    # Logged losses are global (the mean over ranks of each rank's share of the global mean).
    assert len(one_losses) == 3
    assert two_losses == pytest.approx(one_losses, rel=1e-4, abs=1e-6)


EVALUATION = {
    # 3 held-out prompts, one per call: rank 0 makes two calls, rank 1 one and a throw-away one.
    "class_path": "lit_posttrain.callbacks.Evaluation",
    "init_args": {"every_n_steps": 1, "batch_size": 1, "samples": 2, "k": [1]},
}
FORGETTING = {"class_path": "lit_posttrain.callbacks.ForgettingProbes", "init_args": {"kl_prompts": 2, "max_items": 4}}
METHODS = {
    "sft": ["--model.class_path", "lit_posttrain.methods.sft.SFT"],
    # Rollouts reused for 2 steps: a rank with no stale prompt joins the others' sampling.
    "grpo": ["--trainer.callbacks+", json.dumps({"class_path": "lit_posttrain.callbacks.RolloutRefresh", "init_args": {"every_n_steps": 2}})],
    "opd": ["--model.class_path", "lit_posttrain.methods.opd.OPD", "--model.init_args.teacher", "tiny-random-llama:1"],
    "otr": ["--model.class_path", "lit_posttrain.methods.otr.OTR", "--model.init_args.k", "64"],
    "sept": ["--model.class_path", "lit_posttrain.methods.sept.SePT", "--model.init_args.start_temperature", "0.6"],
    "hpt": ["--model.class_path", "lit_posttrain.methods.hpt.HPT"],
}


# Every method sharded; under DDP the methods the comparison above does not cover that log
# metrics of their own (a metric logged on one rank and not another would hang the run).
@pytest.mark.parametrize(
    ("strategy", "method"), [("fsdp", method) for method in METHODS] + [("ddp", "opd"), ("ddp", "hpt")]
)
def test_every_method_trains_on_two_processes(tmp_path, strategy, method, tiny_model_dir):
    """Full fine-tuning with evaluation, forgetting probes and uneven shares: the run finishes (under
    FSDP a rank that skipped a forward pass would hang it), losses are finite, every weight moves."""
    weights, losses = _fit(
        tmp_path / method, "tiny_grpo.yaml", *STRATEGIES[strategy], *METHODS[method],
        "--data.batch_size", "2", "--data.task.init_args.num_eval", "3", "--trainer.max_steps", "2",
        "--trainer.callbacks+", json.dumps(EVALUATION), "--trainer.callbacks+", json.dumps(FORGETTING),
    )  # fmt: skip
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert all(not torch.equal(start[k], weights[k]) for k in start), "every weight trains in full fine-tuning"


def test_sharded_run_resumes_exactly(tmp_path):
    """Stopped after step 1 with a distributed checkpoint (a folder of shards), resumed to step 3:
    the same losses and weights as the run that was never stopped."""
    common = [
        *STRATEGIES["fsdp"], "--data.batch_size", "4", "--seed_everything", "3",
        "--model.init_args.lora", "{}", "--model.init_args.lora.merge_on_save", "true",
    ]  # fmt: skip
    whole, whole_losses = _fit(tmp_path / "whole", "tiny_grpo.yaml", *common, "--trainer.max_steps", "3")
    checkpoints = tmp_path / "checkpoints"
    _fit(
        tmp_path / "first", "tiny_grpo.yaml", *common, "--trainer.max_steps", "1",
        "--trainer.enable_checkpointing", "true", "--trainer.callbacks+", "lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.dirpath", str(checkpoints), "--trainer.callbacks.save_last", "true",
    )  # fmt: skip
    assert (checkpoints / "last.ckpt").is_dir()
    resumed, resumed_losses = _fit(
        tmp_path / "rest", "tiny_grpo.yaml", *common, "--trainer.max_steps", "3", "--ckpt_path", str(checkpoints / "last.ckpt")
    )
    assert resumed_losses == pytest.approx(whole_losses[1:], rel=1e-5, abs=1e-7)
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
