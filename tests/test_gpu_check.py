"""scripts/gpu_check.sh, the check a GPU machine runs (GRPO and SFT steps under FSDP2 in
bf16-mixed, full fine-tuning and LoRA), smoke-run on the CPU with a tiny model: every path it takes
on the GPU runs here, so a lent GPU's few minutes are not lost to a broken script."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_posttrain.models import ModelSourceError, load_model, resolve_model_source

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.benchmark
def test_the_gpu_check_runs_every_setting_on_the_cpu():
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], env={**os.environ, "SMOKE": "1"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert "probe: one GRPO step of tiny-random-llama" in done.stdout  # the fail-fast step ran first, and passed
    assert "MFU against a peak of 1.000 TFLOP/s" in done.stdout
    settings = {(r["method"], r["tuning"]) for r in results}
    assert settings == {("grpo", "full"), ("grpo", "lora"), ("sft", "full"), ("sft", "lora")}
    for r in results:
        assert r["strategy"] == "fsdp" and r["precision"] == "bf16-mixed" and r["weights"] == "float32"
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["peak_gib"] > 0


def test_a_random_shape_is_its_published_config_with_seeded_weights():
    config = AutoConfig.from_pretrained(resolve_model_source("random:qwen2-0.5b"))
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.vocab_size) == ("qwen2", 896, 24, 151936)
    with torch.device("meta"):
        assert 490e6 < sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters()) < 500e6  # Qwen2-0.5B's 494M
    folder = resolve_model_source("random:smollm2-135m:3")
    model, again = load_model(folder, torch.float32), load_model(folder, torch.float32)
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, again.model.layers[0].mlp.up_proj.weight)
    with pytest.raises(ModelSourceError, match="SHAPE one of smollm2-135m, smollm2-360m, qwen2-0.5b, qwen2-1.5b"):
        resolve_model_source("random:gpt2")
