"""Where a run's own files go (the trained model, the periodic exports, a pre-emption checkpoint),
whatever logger it uses."""

from __future__ import annotations

from pathlib import Path

import lightning as L


def run_dir(trainer: L.Trainer) -> Path:
    """The run's folder: where Lightning's `ModelCheckpoint` puts its `checkpoints/`, the first
    logger's `<save_dir>/<name>/<version>`: the CSV logger's versioned log directory, a W&B
    project and run id, an MLflow experiment and run id (not W&B's `log_dir`, `.` for every run,
    which the next run would overwrite); without a logger, `default_root_dir`. A collective under
    data parallelism (only rank 0's logger has a run behind it): every rank must ask."""
    folder = None
    if trainer.is_global_zero:
        logger = trainer.logger
        if logger is None:
            folder = str(trainer.default_root_dir)
        else:
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            folder = str(Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version)
    return Path(trainer.strategy.broadcast(folder))
