"""Two CPU processes under DDP train to the same weights as one process on the same global batch.

Each run goes through the real `lit-posttrain` command, whose launcher starts the second process.
"""

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


def _train(tmp_path: Path, name: str, config: str, global_batch: int, devices: int, *extra: str) -> dict:
    out = tmp_path / name
    args = [
        CLI, "fit", "--config", str(ROOT / "configs" / config), "--export_to", str(out),
        "--data.batch_size", str(global_batch // devices), "--data.shuffle", "false", "--trainer.max_steps", "3",
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--seed_everything", "3",
        "--model.init_args.lora", "{}", "--model.init_args.lora.merge_on_save", "true", *extra,
    ]  # fmt: skip
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(out / "model.safetensors")


@pytest.mark.parametrize(
    ("config", "extra"),
    [("tiny.yaml", []), ("tiny_grpo.yaml", ["--data.task.init_args.num_train", "32"])],
    ids=["sft", "grpo"],
)
def test_ddp_matches_one_process(tmp_path, config, extra, tiny_model_dir):
    one = _train(tmp_path, "one", config, 8, 1, *extra)
    two = _train(tmp_path, "two", config, 8, 2, *extra)
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(one[k], start[k]) for k in one), "training moved the weights"
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), name
