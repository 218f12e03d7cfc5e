"""Test-only callbacks that end a run abruptly, importable by `lit-posttrain` subprocesses."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process when step `step` is about to start: the checkpoints of every earlier
    step have been written (ModelCheckpoint runs after the other callbacks)."""

    def __init__(self, step: int, sig: int = int(signal.SIGKILL)) -> None:
        self.step, self.sig = step, sig

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)
