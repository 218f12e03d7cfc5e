"""A polite stop: SIGTERM (a scheduler's pre-emption, `kill`) saves a checkpoint before exiting."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_posttrain.run_dir import run_dir


class CheckpointOnSigterm(L.Callback):
    """Lightning stops the fit loop cleanly on SIGTERM; this callback writes a resumable checkpoint
    at that point (`<dirpath>/sigterm.ckpt`, written atomically by Lightning), so that
    `--ckpt_path <dirpath>/sigterm.ckpt` continues where the run stopped.

    Args:
        dirpath: folder for the checkpoint (null: the run's checkpoints folder).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.saved: Path | None = None

    def on_exception(self, trainer: L.Trainer, module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        run = run_dir(trainer)  # a collective under data parallelism: every rank asks
        folder = Path(self.dirpath) if self.dirpath else run / "checkpoints"
        self.saved = folder / "sigterm.ckpt"
        trainer.save_checkpoint(self.saved)
        rank_zero_info(f"SIGTERM: checkpoint saved to {self.saved}; resume with --ckpt_path {self.saved}")
