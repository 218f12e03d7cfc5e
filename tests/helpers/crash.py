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


class KillInsideCheckpointWrite(L.Callback):
    """SIGKILL this process inside the checkpoint write that follows optimizer step `step`, after
    the new checkpoint's bytes are written and before they are put in place: a single file (its
    temporary copy written, not yet moved over the name) or FSDP2's distributed folder (every
    rank's shards written, Lightning's metadata file not). Patched just before ModelCheckpoint,
    which runs after the other callbacks, saves."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        from fsspec.implementations.local import LocalFileOpener
        from lightning.pytorch.strategies import model_parallel

        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        LocalFileOpener.commit = die
        save_shards = model_parallel._distributed_checkpoint_save

        def save_shards_then_die(*args, **kwargs):
            save_shards(*args, **kwargs)
            die()

        model_parallel._distributed_checkpoint_save = save_shards_then_die


class KillAtOptimizerStep(L.Callback):
    """SIGKILL this process just before optimizer step `step` runs, which may be in the middle of
    a training_step that takes several (GRPO's ppo_epochs x mini_batches)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class EngineFailsAtStep(L.Callback):
    """From step `step` on, the rollout engine raises `EngineUnavailable` when asked to sample, as
    `VLLMServerEngine` does when its server stops answering."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            from lit_posttrain.rollout.engine import EngineUnavailable

            def gone(*args, **kwargs):
                raise EngineUnavailable("test: the server stopped answering")

            module.engine.generate = gone
