"""Training steps of published model shapes with random weights (`random:<shape>`, nothing
downloaded): step time, tokens/s, MFU and peak memory, for GRPO and SFT, full fine-tuning and
LoRA, one process or FSDP2, on the CPU or a GPU.

    .venv/bin/python benchmarks/model_sizes.py --shapes smollm2-135m smollm2-360m qwen2-0.5b \\
        --methods grpo sft --tuning lora full --strategy single fsdp --devices 1 --lengths 256

Each setting runs `--steps` optimizer steps after one warm-up step through a real Trainer, in a
process of its own (peak memory is a process's high-water mark), one at a time. GRPO is handed
`--prompts` x `--group` completions of `length` random tokens after 64-token prompts
(`synthetic.SyntheticRollouts`: no sampling, the step is the loss forward, the backward and the
optimizer step); SFT trains on `--prompts` x `--group` demonstrations of `length` tokens
(`synthetic.SyntheticTask`), in one optimizer step. Both run in micro-batches of at most
`--micro-tokens` tokens (`micro_batching`).

- tokens/s: trained tokens of all processes (the policy forward's, as `tokens/trained` counts
  them) / median step time.
- MFU: model FLOPs / median step time / peak. FLOPs per trained token are 6N with full
  fine-tuning (forward 2N, backward 4N) and 4N with LoRA (the frozen weights' gradients are not
  taken), N the parameters in matmuls (the input embedding is a lookup; a tied head counts once),
  plus attention's 6 x layers x width x context / 2. The peak (`--peak-tflops`) is by default the
  GPU's bf16 dense peak, 989 TFLOP/s for an H100/H200 SXM, on a GPU; on the CPU the best of
  2048^3 GEMMs in the compute dtype measured on the same threads before the runs (throughput.py's).
  On a GPU `mfu_measured` divides by the bf16 8192^3 matmul rate measured there before the runs
  (791-798 TFLOP/s on an H200, 2026-12-04).
- Peak memory: on a GPU `torch.cuda.max_memory_allocated` (rank 0); on the CPU the peak RSS of
  rank 0's process (each FSDP2 process holds its shard and its own activations).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import lightning as L
import torch
from isolated import run_isolated


def one(args: argparse.Namespace) -> dict:
    from lightning.pytorch.strategies import ModelParallelStrategy
    from synthetic import SyntheticRollouts, SyntheticTask

    from lit_posttrain.data.datamodule import TaskDataModule
    from lit_posttrain.methods.grpo import GRPO
    from lit_posttrain.methods.sft import SFT
    from lit_posttrain.micro_batching import MicroBatching
    from lit_posttrain.models import LoRA
    from lit_posttrain.rollout import HFEngine

    source = args.shape if args.shape.startswith("tiny") else f"random:{args.shape}"
    rows = args.prompts * args.group
    common = dict(
        model=source, lora=LoRA() if args.tuning == "lora" else None, dtype=args.dtype, attn_implementation=args.attn,
        micro_batching=MicroBatching(max_tokens=args.micro_tokens),
    )  # fmt: skip
    if args.method == "grpo":
        from transformers import AutoConfig

        from lit_posttrain.models import resolve_model_source

        vocab = AutoConfig.from_pretrained(resolve_model_source(source)).vocab_size
        rollouts = SyntheticRollouts(args.prompts, args.group, args.length, 64, vocab)
        module = GRPO(
            **common, group_size=args.group, rollouts=rollouts, engine=HFEngine(max_new_tokens=args.length)
        )  # fmt: skip
        task, batch_size = SyntheticTask(rows=args.prompts * (args.steps + 1) * args.devices, length=4), args.prompts
    else:
        module = SFT(**common)
        task, batch_size = SyntheticTask(rows=rows * (args.steps + 1) * args.devices, length=args.length), rows
    data = TaskDataModule(task=task, batch_size=batch_size, max_completion_tokens=args.length + 1, shuffle=False)
    timer = StepTimer(args.accelerator)
    strategy = ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1) if args.strategy == "fsdp" else "auto"
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=args.devices, strategy=strategy, precision=args.precision,
        max_steps=args.steps + 1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, data)
    step_s = statistics.median(timer.seconds[1:])
    trained = statistics.median(timer.tokens[1:]) * args.devices  # every process trains as many
    flops = training_flops(module, trained, args.length + 64, args.tuning)
    return {
        "shape": args.shape, "method": args.method, "tuning": args.tuning, "strategy": args.strategy,
        "devices": args.devices, "precision": args.precision, "weights": str(module.weight_dtype).removeprefix("torch."),
        "completion_tokens": args.length, "rows": rows, "micro_tokens": args.micro_tokens, "attn": args.attn or "default",
        "params_m": round(sum(p.numel() for p in module.policy.parameters()) / 1e6, 2),  # a DTensor counts its whole
        "step_s": round(step_s, 3), "tokens_per_s": round(trained / step_s, 1), "model_flops": flops,
        "peak_gib": round(timer.peak_gib, 2), "rank": trainer.global_rank,
    }  # fmt: skip


class StepTimer(L.Callback):
    """Each step's wall time and trained tokens, and the peak memory so far."""

    def __init__(self, accelerator: str) -> None:
        self.accelerator = accelerator
        self.seconds: list[float] = []
        self.tokens: list[float] = []
        self.peak_gib = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.accelerator == "gpu":
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.accelerator == "gpu":
            torch.cuda.synchronize()
            self.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        self.seconds.append(time.perf_counter() - self.start)
        # The module's tally of this step, before it logs and clears it (callbacks run first).
        self.tokens.append(module.step_cost.totals["tokens/trained"])


def training_flops(module, tokens: float, context: int, tuning: str) -> float:
    """Model FLOPs of a step that trained `tokens` tokens of sequences about `context` long."""
    config = module.policy.config if module.lora is None else module.policy.get_base_model().config
    n = matmul_params(config)
    attention = 6 * config.num_hidden_layers * config.hidden_size * context / 2
    return ((6 if tuning == "full" else 4) * n + attention) * tokens


def matmul_params(config) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return total - embedding + (embedding if config.tie_word_embeddings else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m", "smollm2-360m", "qwen2-0.5b"])
    parser.add_argument("--methods", nargs="+", choices=["grpo", "sft"], default=["grpo", "sft"])
    parser.add_argument("--tuning", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    parser.add_argument("--strategies", nargs="+", choices=["single", "fsdp"], default=["single"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256])
    parser.add_argument("--devices", type=int, default=1, help="processes (FSDP2 shards over them)")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--precision", default="32-true", help="Lightning's: 32-true, bf16-mixed, bf16-true")
    parser.add_argument("--dtype", default="float32", help="the weights' dtype (float32 masters for bf16-mixed)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--micro-tokens", type=int, default=4096)
    parser.add_argument("--attn", default=None, help="transformers' attention kernel (sdpa, eager, ...; default: its choice, sdpa)")
    parser.add_argument("--steps", type=int, default=2, help="timed optimizer steps, after one warm-up")
    parser.add_argument("--peak-tflops", type=float, help="the peak MFU divides by (default: 989 on a GPU, H100/H200 SXM bf16 dense; measured on the CPU)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        # The setting comes by the environment: Lightning starts FSDP's other processes with this argv.
        result = one(argparse.Namespace(**{**vars(args), **json.loads(os.environ["MODEL_SIZES_ONE"])}))
        if result["rank"] == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return
    if args.peak_tflops is None:
        args.peak_tflops = 989.0 if args.accelerator == "gpu" else cpu_peak(args) / 1e12
    peak = args.peak_tflops * 1e12
    print(f"MFU against a peak of {args.peak_tflops:.3f} TFLOP/s ({'per GPU' if args.accelerator == 'gpu' else 'the machine'})", flush=True)
    measured = None  # a GPU's datasheet peak is not what its matmuls reach: measure that too
    if args.accelerator == "gpu":
        from throughput import matmul_peak

        measured = matmul_peak(torch.bfloat16, size=8192, device="cuda")
        print(f"bf16 8192^3 matmul measured here: {measured / 1e12:.0f} TFLOP/s (mfu_measured divides by it)", flush=True)
    failed = 0
    for shape in args.shapes:
        for method in args.methods:
            for tuning in args.tuning:
                for strategy in args.strategies:
                    for length in args.lengths:
                        setting = {"shape": shape, "method": method, "tuning": tuning, "strategy": strategy, "length": length}
                        command = [sys.executable, __file__, "--one", *sys.argv[1:]]
                        result = run_isolated(command, setting, env={"MODEL_SIZES_ONE": json.dumps(setting)}, marker="RESULT ")
                        if "failed" in result:
                            print(json.dumps(result), flush=True)
                            failed += 1
                            continue
                        # A GPU's peak is per device; the CPU's measured peak is the machine's, shared by its processes.
                        machine_peak = peak * (args.devices if args.accelerator == "gpu" else 1)
                        flops = result.pop("model_flops") / result["step_s"]
                        result["mfu"] = round(flops / machine_peak, 4)
                        if measured is not None:
                            result["mfu_measured"] = round(flops / (measured * args.devices), 4)
                        print(json.dumps(result), flush=True)
    sys.exit(1 if failed else 0)


def cpu_peak(args: argparse.Namespace) -> float:
    from throughput import matmul_peak

    dtype = torch.bfloat16 if args.precision.startswith("bf16") else getattr(torch, args.dtype)
    return matmul_peak(dtype)


if __name__ == "__main__":
    main()
