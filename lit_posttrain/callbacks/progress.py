"""The progress bar of a run bounded by optimizer steps."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar without what misleads in a run bounded by `max_steps`: the
    epoch count against `max_epochs - 1` ("Epoch 1/-2" when max_epochs is -1, unbounded) and the
    logger's version number (`v_num`), which is not a metric."""

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
