"""VLLMEngine under FSDP2, two processes each with its own engine. A file of its own so that the
test runner can run it beside tests/test_vllm_engine.py (it is the longest test: two engines and two
trainers on two cores)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_engine import ATOL, needs_vllm

pytestmark = [needs_vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def test_each_process_has_its_own_engine_under_fsdp(tmp_path):
    """Two CPU processes, the policy sharded with FSDP2 (LoRA, pushed to each engine as merged full
    weights gathered from both shards): two steps train, the second samples from the weights the
    first step made (the sampler-trainer gap stays at the numerics' level), and the model exports."""
    args = [
        str(Path(sys.executable).parent / "lit-posttrain"), "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--config", str(ROOT / "configs" / "engines" / "vllm.yaml"), "--config", str(ROOT / "configs" / "strategies" / "fsdp_cpu2.yaml"),
        # GRPO samples and compares every step (HPT's steps that are all SFT would not).
        "--model.class_path", "lit_posttrain.methods.grpo.GRPO",
        "--model.init_args.dtype", "float32", "--trainer.max_steps", "2", "--trainer.callbacks", "[]",
        "--data.batch_size", "1", "--model.init_args.group_size", "2", "--export_to", str(tmp_path / "model"),
    ]  # fmt: skip
    # One thread per process: two processes on two cores, as in tests/test_distributed.py.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = tmp_path.glob("runs/quickstart/version_*/metrics.csv")  # the quickstart logs beside its model
    with open(metrics) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(rows) == 2
    assert all(0 <= float(r["train/sampler_abs_diff"]) < ATOL["VLLMEngine"] for r in rows)
    assert (tmp_path / "model" / "model.safetensors").is_file()
