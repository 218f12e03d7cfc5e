"""Peak memory and time of one GRPO training step at real completion lengths, through a real
Trainer, with micro-batches (`micro_batching`) and without.

The step as the shipped configs run it (the built-in model, LoRA r16, `dtype: auto`, the CLI's
default precision, GRPO's preset loss, AdamW), on 8 prompts x 8 completions of random tokens after 64-token prompts, every
completion full length and each group's rewards half 0 and half 1 (no row is skipped). Sampling
is left out: the step is handed that rollout (`synthetic.SyntheticRollouts`), so what is measured is the loss forward, the backward and the optimizer step. Each
setting runs in a fresh process (peak resident memory is a process's high-water mark), one at a
time, with the C allocator's settings from the environment, as a run of the CLI has them
(benchmarks/isolated.py; `MALLOC_MMAP_THRESHOLD_=65536` in front of the command measures the
leanest and slowest setting, which runs before 2026-12-04 used):

    .venv/bin/python benchmarks/step_memory.py --lengths 256 1024 --budgets 4096 none

`--budgets none` is one pass over every row (the step before micro-batches); it is refused past
32 rows x 128 tokens unless `--allow-oom` (64 x 128 needed 13 GiB, benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from isolated import run_isolated

WHOLE_LIMIT = 64 * 128  # completion tokens (rows x length) one pass was measured to fit in 24 GiB


def one(length: int, budget: str, prompts: int, group: int, prompt_tokens: int) -> dict:
    import lightning as L
    import torch
    from synthetic import SyntheticRollouts

    from lit_posttrain.data.arithmetic import Arithmetic
    from lit_posttrain.data.datamodule import TaskDataModule
    from lit_posttrain.methods.grpo import GRPO
    from lit_posttrain.micro_batching import MicroBatching
    from lit_posttrain.models import LoRA
    from lit_posttrain.precision import default_precision
    from lit_posttrain.rollout import HFEngine

    torch.manual_seed(0)
    rows = prompts * group
    module = GRPO(
        lora=LoRA(), group_size=group, rollouts=SyntheticRollouts(prompts, group, length, prompt_tokens, 49152), engine=HFEngine(max_new_tokens=length),
        micro_batching=None if budget == "default" else MicroBatching(max_tokens=None if budget == "none" else int(budget)),
    )  # fmt: skip
    data = TaskDataModule(task=Arithmetic(num_train=prompts, num_eval=4), batch_size=prompts)
    # The CLI's default precision (bf16-mixed where bf16 is native, else 32-true), as a shipped config runs.
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
        enable_model_summary=False, precision=default_precision(),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    return {
        "completion_tokens": length, "rows": rows, "prompt_tokens": prompt_tokens,
        "micro_batch_tokens": module.micro_batching.max_tokens, "dtype": str(module.weight_dtype).removeprefix("torch."),
        "precision": str(trainer.precision),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "fit_s": round(seconds, 1), "tokens_per_s": round(rows * length / seconds, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--budgets", nargs="+", default=["default", "none"], help="micro_batching.max_tokens: a number, default or none")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--allow-oom", action="store_true", help="run one pass over every row past what was measured to fit")
    parser.add_argument("--one", nargs=2, metavar=("LENGTH", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.prompts, args.group, args.prompt_tokens)))
        return
    for length in args.lengths:
        for budget in args.budgets:
            if budget == "none" and length * args.prompts * args.group > WHOLE_LIMIT and not args.allow_oom:
                print(json.dumps({"completion_tokens": length, "micro_batch_tokens": None, "skipped": "over 24 GiB (--allow-oom)"}))
                continue
            command = [sys.executable, __file__, "--one", str(length), budget, "--prompts", str(args.prompts),
                       "--group", str(args.group), "--prompt-tokens", str(args.prompt_tokens)]  # fmt: skip
            print(json.dumps(run_isolated(command, {"completion_tokens": length, "micro_batch_tokens": budget})), flush=True)


if __name__ == "__main__":
    main()
