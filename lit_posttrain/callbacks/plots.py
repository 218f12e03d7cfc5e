"""PNG charts of the run's metrics, written into the run folder at the end of fit."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from lit_posttrain.plots import plot_runs


class Plots(L.Callback):
    """At the end of fit, chart reward, accuracy and forgetting over steps (`lit-posttrain-plot`
    draws the same charts later from the run folder, and compares runs).

    Args:
        out_dir: folder for the PNGs (null: the CSV logger's run folder).
    """

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir
        self.written: list = []

    def on_fit_end(self, trainer: L.Trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is None:
            rank_zero_info("Plots: no CSVLogger in this run, so there is no metrics.csv to chart")
            return
        csv_logger.save()  # flush what is still buffered
        self.written = plot_runs([csv_logger.log_dir], self.out_dir or csv_logger.log_dir)
        rank_zero_info("charts: " + ", ".join(str(p) for p in self.written))
