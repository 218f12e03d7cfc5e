"""The training process's resident memory along a run: a long run whose memory grows step after
step keeps something it should not (rollouts, logs, caches), and this is where it shows first.

Resident memory alone cannot tell a leak from an allocator that keeps freed blocks for reuse
(glibc's malloc does, and sampling with growing shapes leaves it many), so the monitor can also
count the tensors Python still reaches and, separately, hand freed memory back to the system."""

from __future__ import annotations

import gc

import lightning as L
import torch

from lit_posttrain.allocator import release_freed_memory


def live_objects() -> tuple[int, int, int]:
    """`(Python objects, tensor storages, their bytes)`: every object the garbage collector tracks,
    and the distinct storages of the tensors among them (parameters, optimizer state, rollouts,
    caches). Both flat along a run when nothing is kept by mistake."""
    storages: dict[int, int] = {}
    objects = gc.get_objects()
    for obj in objects:
        # type(), not isinstance(): isinstance reads `__class__`, which lazy module proxies answer
        # with a deprecation warning.
        if not issubclass(type(obj), torch.Tensor) or obj.is_meta:
            continue
        try:
            storage = obj.untyped_storage()
        except RuntimeError:  # tensors without storage (sparse, some subclasses): not sizable here
            continue
        storages[storage.data_ptr()] = storage.nbytes()
    return len(objects), len(storages), sum(storages.values())


class MemoryMonitor(L.Callback):
    """Logs `memory/rss_gib`, this process's resident set size in GiB, every `every_n_steps`
    optimizer steps (reading it costs microseconds), and keeps `(step, GiB)` in `history`.

    Args:
        every_n_steps: log every N optimizer steps.
        count_tensors: also log `memory/tensor_gib` and `memory/tensors`, the storages of live
            tensors, and `memory/python_objects` (a walk over every Python object: a fraction of a
            second; for diagnosis). Resident memory growing while these stay flat is the
            allocator, not a leak.
        release_freed: hand the allocator's free pages back to the system before each reading
            (glibc only), so that the reading shows memory in use rather than high-water marks.
    """

    def __init__(self, every_n_steps: int = 1, count_tensors: bool = False, release_freed: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"MemoryMonitor every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.count_tensors = count_tensors
        self.release_freed = release_freed
        self.history: list[tuple[int, float]] = []
        import psutil  # here, not at import: a machine without it runs every other callback

        self._process = psutil.Process()

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        if self.release_freed:
            release_freed_memory()
        metrics = {"memory/rss_gib": self._process.memory_info().rss / 2**30}
        if self.count_tensors:
            objects, tensors, nbytes = live_objects()
            metrics |= {"memory/python_objects": float(objects), "memory/tensors": float(tensors), "memory/tensor_gib": nbytes / 2**30}
        self.history.append((step, metrics["memory/rss_gib"]))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
