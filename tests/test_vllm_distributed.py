"""VLLMEngine under FSDP2, two processes each with its own engine. A file of its own so that the
test runner can run it beside tests/test_vllm_engine.py (two engines and two trainers on two
cores)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine import ATOL, needs_vllm
from transformers import AutoModelForCausalLM

from lit_posttrain.tiny import build_tiny_llama

pytestmark = [needs_vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def test_each_process_has_its_own_engine_under_fsdp(tmp_path):
    """Two CPU processes, the policy sharded with FSDP2 (LoRA, pushed to each engine as merged full
    weights gathered from both shards): OPD samples with vLLM and trains for two steps, the second
    sampling from the weights the first step made: the sampler-trainer gap stays at the numerics'
    level while the steps move the policy's log-probs by far more. The model exports.

    Tiny random Llamas with head size 32 (vLLM's CPU attention serves no smaller), so that the test
    costs the engines' start-up and not the built-in model's compute (145 s with it, two steps on
    one thread each); OPD, because its loss has a gradient from the first step whatever the model
    samples (GRPO's groups of a random model are all wrong, and give none)."""
    student, teacher = tmp_path / "student", tmp_path / "teacher"
    build_tiny_llama(student, seed=0, hidden_size=128)
    build_tiny_llama(teacher, seed=1, hidden_size=128)
    args = [
        str(Path(sys.executable).parent / "lit-posttrain"), "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--config", str(ROOT / "configs" / "engines" / "vllm.yaml"), "--config", str(ROOT / "configs" / "strategies" / "fsdp_cpu2.yaml"),
        "--model.class_path", "lit_posttrain.methods.opd.OPD", "--model.init_args.model", str(student),
        "--model.init_args.teacher", str(teacher), "--model.init_args.optim.lr", "0.01",
        "--model.init_args.dtype", "float32", "--trainer.precision", "32-true", "--trainer.max_steps", "2", "--trainer.callbacks", "[]",
        "--data.batch_size", "2", "--export_to", str(tmp_path / "model"),
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
    # A stale engine would sample step 2 from the starting weights: its gap would be what the
    # first step moved the log-probs, which must be far above the tolerance for the check above
    # to catch it. (Measured on the exported model: what both steps moved them.)
    tokens = torch.arange(5, 45).unsqueeze(0)
    logp = [
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(tokens).logits.log_softmax(-1)
        for folder in (student, tmp_path / "model")
    ]
    assert (logp[1] - logp[0]).abs().max() > 20 * ATOL["VLLMEngine"]
