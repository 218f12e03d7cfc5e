"""Held-out evaluation during training, step 0 included: the baseline every later number is read
against."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class HeldOutEvaluation(L.Callback):
    """Greedy accuracy of the policy on the task's held-out split, under the task's verifier.

    Runs before the first step, every `every_n_steps` optimizer steps, and after the last step.
    Results are logged as `eval/*` and kept in `history` (per-example rewards included).

    Args:
        every_n_steps: evaluate every N optimizer steps (null: only before and after training).
        max_examples: evaluate on the first N held-out examples only (null: all of them).
        batch_size: prompts per generation call.
    """

    def __init__(self, every_n_steps: int | None = None, max_examples: int | None = None, batch_size: int = 64) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"HeldOutEvaluation every_n_steps must be >= 1 or null, got {every_n_steps}")
        self.every_n_steps, self.max_examples, self.batch_size = every_n_steps, max_examples, batch_size
        self.history: list[dict] = []

    def _evaluate(self, trainer: L.Trainer, module) -> None:
        step = trainer.global_step
        if self.history and self.history[-1]["step"] == step:
            return
        rows = trainer.datamodule.eval_rows[: self.max_examples]
        start = time.perf_counter()
        result = module.evaluate(rows, batch_size=self.batch_size)
        result.update(step=step, time_s=time.perf_counter() - start)
        self.history.append(result)
        metrics = {f"eval/{k}": result[k] for k in ("accuracy", "completion_length", "truncated", "time_s")}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        rank_zero_info(f"step {step}: held-out accuracy {result['accuracy']:.3f} on {len(rows)} examples")

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        self._evaluate(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._evaluate(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        self._evaluate(trainer, module)
