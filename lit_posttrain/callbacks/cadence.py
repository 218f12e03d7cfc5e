"""The cadence the measuring callbacks share: before the first step, every N steps, after the last."""

from __future__ import annotations

import lightning as L


class EveryNSteps(L.Callback):
    """Calls `run` before the first optimizer step (the baseline), every `every_n_steps` optimizer
    steps, and after the last one; never twice at the same step."""

    def __init__(self, every_n_steps: int | None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"{type(self).__name__} every_n_steps must be >= 1 or null, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._last_step: int | None = None

    def run(self, trainer: L.Trainer, module) -> None:
        raise NotImplementedError

    def _run_once(self, trainer: L.Trainer, module) -> None:
        if self._last_step != trainer.global_step:
            self._last_step = trainer.global_step
            self.run(trainer, module)

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        self._run_once(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._run_once(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        self._run_once(trainer, module)
