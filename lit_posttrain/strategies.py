"""Lightning's FSDP2 strategy with distributed checkpoints that a kill cannot half-write."""

from __future__ import annotations

import shutil
from pathlib import Path

from lightning.pytorch.strategies import ModelParallelStrategy

from lit_posttrain.atomic import recover_folder, replace_folder, sibling


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """`ModelParallelStrategy` (FSDP2; `tensor_parallel_size: 1` for lit_posttrain's sharding)
    whose distributed-checkpoint folders are written beside their final name and swapped in once
    every rank has written its shards. Lightning's own writes into the folder in place: a kill
    while `last.ckpt` was being rewritten left the previous step's metadata over some of the new
    step's shards, a checkpoint that resumes into a different run."""

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        if not self._save_distributed_checkpoint:  # one file: Lightning writes it atomically
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(filepath))
        tmp = sibling(path, ".tmp")
        if self.global_rank == 0:
            recover_folder(path)
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier()
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier()  # every rank's shards are written
        if self.global_rank == 0:
            replace_folder(tmp, path)
        self.barrier()
