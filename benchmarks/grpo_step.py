"""One GRPO step on the built-in model, broken into its phases, against the machine's measured peak.

    .venv/bin/python benchmarks/grpo_step.py [--steps 8] [--threads 2]

Runs the quickstart configuration (GRPO + LoRA, SmolLM2-135M-Instruct, 8 prompts x 8 samples,
8 new tokens) for a few steps through the real CLI, reads the per-step timings the module logs
(generation, scoring, loss forward, backward + optimizer step) and reports, per phase, the median
time, tokens per second, and model FLOPs utilisation against a bf16 matmul peak measured here.

FLOPs are the usual 2 * N per token for a forward pass, N the parameters that take part in
matmuls (the input embedding is a lookup; the tied output head counts once; attention's own FLOPs
are small at these lengths and left out). Backward with LoRA: the
activations' gradients cost about one more forward (2 * N per token); the adapters' weight
gradients are negligible.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bf16_matmul_peak(size: int = 2048, repeats: int = 20) -> float:
    """Sustained bf16 GEMM throughput in FLOP/s (best of a few timed runs)."""
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


def non_embedding_params(folder: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    # The embedding is a lookup, not a matmul; a tied output head is a matmul and counts once.
    embedding = model.get_input_embeddings().weight.numel()
    return total - embedding + (embedding if config.tie_word_embeddings else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps to time (the first is dropped as warm-up)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lit_posttrain.cli import LitPostTrainCLI
    from lit_posttrain.models import resolve_model_source

    peak = bf16_matmul_peak()
    params = non_embedding_params(resolve_model_source("builtin:smollm2-135m-instruct"))
    with tempfile.TemporaryDirectory() as tmp:
        cli = LitPostTrainCLI(
            args=[
                "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                "--trainer.max_steps", str(args.steps), "--trainer.callbacks", "[]",
                "--trainer.logger.init_args.save_dir", tmp, "--trainer.enable_progress_bar", "false",
            ]
        )  # fmt: skip
        with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("time/generate_s")][1:]  # drop the warm-up step

    def median(key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)

    generated, trained, prompts = median("tokens/generated"), median("tokens/trained"), median("tokens/prompts")
    phases = {
        # generation runs each prompt once (prefill), then one token per sample per decoding step
        "generation": (median("time/generate_s"), generated, 2 * params * (prompts + generated)),
        "scoring": (median("time/score_s"), None, 0.0),
        "loss forward": (median("time/loss_forward_s"), trained, 2 * params * trained),
        "backward + step": (median("time/backward_step_s"), trained, 2 * params * trained),
    }
    total = sum(t for t, _, _ in phases.values())
    print(f"machine: {torch.get_num_threads()} threads, bf16 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"model: SmolLM2-135M-Instruct, {params / 1e6:.1f}M parameters in matmuls (tied head once), LoRA r16")
    print(f"steps timed: {len(rows)} (median per step), step total {total:.2f} s\n")
    print("| phase | time (s) | share | tokens | tokens/s | MFU |")
    print("|---|---|---|---|---|---|")
    for name, (seconds, tokens, flops) in phases.items():
        mfu = f"{flops / seconds / peak:.1%}" if flops and seconds else "-"
        rate = f"{tokens:.0f} | {tokens / seconds:.0f}" if tokens else "- | -"
        print(f"| {name} | {seconds:.3f} | {seconds / total:.0%} | {rate} | {mfu} |")
    print(f"\nmean reward over the timed steps: {statistics.mean(float(r['train/reward']) for r in rows):.3f}")


if __name__ == "__main__":
    main()
