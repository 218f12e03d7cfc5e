"""The training process's resident memory along a run: a long run whose memory grows step after
step keeps something it should not (rollouts, logs, caches), and this is where it shows first."""

from __future__ import annotations

import lightning as L
import psutil


class MemoryMonitor(L.Callback):
    """Logs `memory/rss_gib`, this process's resident set size in GiB, every `every_n_steps`
    optimizer steps (reading it costs microseconds), and keeps `(step, GiB)` in `history`.

    Args:
        every_n_steps: log every N optimizer steps.
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"MemoryMonitor every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.history: list[tuple[int, float]] = []
        self._process = psutil.Process()

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        rss_gib = self._process.memory_info().rss / 2**30
        self.history.append((step, rss_gib))
        for logger in trainer.loggers:
            logger.log_metrics({"memory/rss_gib": rss_gib}, step=step)
