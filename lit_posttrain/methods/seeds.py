"""The seeds sampling takes from the run, the optimizer step and the sample's own parts (its
prompt, its rank), so that a sample is the same whichever batch or process it lands in and after a
resume; and the step a draw belongs to when it runs ahead of training in another thread."""

from __future__ import annotations

import os
import zlib
from contextlib import contextmanager
from contextvars import ContextVar

# The step sampling belongs to where it is not the trainer's (`seeded_as_step`), per thread.
_sampling_step: ContextVar[int | None] = ContextVar("lit_posttrain_sampling_step", default=None)


class RunSeeds:
    """A `PostTrainingModule` mixin: `run_seed(*parts)`, `sampling_step` and `seeded_as_step`."""

    def run_seed(self, *parts) -> int:
        """A seed from the run's seed, the step and `parts`: the same after a resume, on any rank."""
        return zlib.crc32(repr((os.environ.get("PL_GLOBAL_SEED", "0"), self.sampling_step, *parts)).encode())

    @property
    def sampling_step(self) -> int:
        """The optimizer step that sampling in this thread belongs to (its seeds, a temperature
        schedule): the trainer's, or the step that started a draw ahead of training (`seeded_as_step`)."""
        step = _sampling_step.get()
        if step is None:
            step = self._trainer.global_step if self._trainer is not None else 0
        return step

    @staticmethod
    @contextmanager
    def seeded_as_step(step: int):
        """Sampling in this thread as at optimizer step `step` (`sampling_step`): samples drawn ahead
        of training, in a worker thread while the trainer's step moves on, belong to the step that
        started them."""
        token = _sampling_step.set(step)
        try:
            yield
        finally:
            _sampling_step.reset(token)
