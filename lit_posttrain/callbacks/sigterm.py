"""A polite stop: SIGTERM (a scheduler's pre-emption, `kill`) or a rollout engine that stopped
answering (a vLLM server gone) saves a checkpoint before exiting."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_posttrain.rollout.engine import EngineUnavailable
from lit_posttrain.run_dir import run_dir


class CheckpointOnSigterm(L.Callback):
    """Lightning stops the fit loop cleanly on SIGTERM; this callback writes a resumable checkpoint
    at that point (`<dirpath>/sigterm.ckpt`, written atomically by Lightning), so that
    `--ckpt_path <dirpath>/sigterm.ckpt` continues where the run stopped. A rollout engine that
    cannot sample or take weights (`EngineUnavailable`) stops the run at the start of a step,
    before any of its passes: the checkpoint (`engine_unavailable.ckpt`) holds the steps before it,
    and the resumed run takes that step again from its beginning.

    Args:
        dirpath: folder for the checkpoint (null: the run's checkpoints folder).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.saved: Path | None = None

    def on_exception(self, trainer: L.Trainer, module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            name, why = "sigterm.ckpt", "SIGTERM"
        elif isinstance(exception, EngineUnavailable) and trainer.global_step > 0:  # at step 0 there is nothing to keep
            name, why = "engine_unavailable.ckpt", "the rollout engine stopped answering"
            # The step in progress stopped before any of its passes: saved as though its batch had
            # never been fetched, which Lightning resumes as a checkpoint saved after the last
            # completed step (and the data loader skips the `processed` batches before it).
            progress = trainer.fit_loop.epoch_loop.batch_progress
            for counts in (progress.current, progress.total):
                counts.ready = counts.started = counts.processed
        else:
            return
        run = run_dir(trainer)  # a collective under data parallelism: every rank asks
        folder = Path(self.dirpath) if self.dirpath else run / "checkpoints"
        self.saved = folder / name
        trainer.save_checkpoint(self.saved)
        rank_zero_info(f"{why}: checkpoint saved to {self.saved}; resume with --ckpt_path {self.saved}")
