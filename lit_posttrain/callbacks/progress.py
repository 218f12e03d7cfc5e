"""The progress bar of a run bounded by optimizer steps."""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar without what misleads in a run bounded by `max_steps`: the
    epoch count against `max_epochs - 1` ("Epoch 1/-2" when max_epochs is -1, unbounded) and the
    logger's version number (`v_num`), which is not a metric.

    When the output is not a terminal (sent to a file, or CI's log), where the bar draws nothing, a
    plain line says the step, the seconds per step and the bar's metrics every `plain_every_s`.
    """

    def __init__(self, plain_every_s: float = 30.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.plain_every_s = plain_every_s
        self._last_line: tuple[float, int] | None = None  # (time, step) of the last plain line

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        # Set when the epoch starts, not updated with each step: the end, not the step now.
        return f"Epoch {current_epoch} (the run stops at step {self.trainer.max_steps})"

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_line = (time.monotonic(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if sys.stdout.isatty() or not trainer.is_global_zero or self._last_line is None:
            return
        now, step = time.monotonic(), trainer.global_step
        last_time, last_step = self._last_line
        if now - last_time < self.plain_every_s or step == last_step:
            return
        self._last_line = (now, step)
        metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.get_metrics(trainer, pl_module).items())
        end = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        print(f"step {step}{end}: {(now - last_time) / (step - last_step):.1f} s/step{', ' + metrics if metrics else ''}", flush=True)
