"""Cost of an OTR step against an SFT step on the same batch (the target: within 1.3x at K = 256).

    .venv/bin/python benchmarks/otr_vs_sft.py [--k 256] [--batch 16] [--repeats 5] [--model builtin:smollm2-135m-instruct]

Both steps run the policy forward on the same packed demonstrations, their loss, and backward
(LoRA r16, bf16, as configs/otr.yaml); the median of `repeats` timed steps after one warm-up each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=256, help="OTR candidates per position")
    parser.add_argument("--batch", type=int, default=16, help="demonstrations per step")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per method")
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct", help="model source")
    args = parser.parse_args()

    import lightning as L

    from lit_posttrain.data.arithmetic import Arithmetic
    from lit_posttrain.data.datamodule import TaskDataModule
    from lit_posttrain.methods.otr import OTR
    from lit_posttrain.methods.sft import SFT
    from lit_posttrain.models import LoRA

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter() - self.start)

    results = {}
    for name, method in (("SFT", SFT), ("OTR", OTR)):
        kwargs = {"k": args.k} if method is OTR else {}
        module = method(model=args.model, lora=LoRA(), **kwargs)
        # One batch per epoch, unshuffled: every step trains on the same demonstrations.
        data = TaskDataModule(Arithmetic(max_operand=20, num_train=args.batch, num_eval=1), batch_size=args.batch, shuffle=False)
        timer = StepTimer()
        trainer = L.Trainer(
            max_steps=args.repeats + 1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, callbacks=[timer],
        )  # fmt: skip
        trainer.fit(module, data)
        rows = data.train_rows
        tokens = sum(len(r.prompt_ids) + len(r.completion_ids) for r in rows)
        results[name] = statistics.median(timer.times[1:])  # the first step is a warm-up
        print(f"{name}: {results[name]:.3f} s per step ({tokens / results[name]:.0f} tokens/s, {len(rows)} rows)")
    print(f"OTR / SFT at K = {args.k}: {results['OTR'] / results['SFT']:.2f}x (torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
