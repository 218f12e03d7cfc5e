"""Samples drawn ahead of training: while the trainer trains on one rollout batch, a worker thread
draws the samples of the next ones with the weights of that moment (`RolloutSource(max_staleness=k)`).

The engine is one sampler with one set of weights, so the worker draws one batch at a time and the
engine takes new weights only when nothing is being drawn: `settle` waits for every draw in flight
before the push that follows a batch's last optimizer step. A draw thus never mixes two weight
versions, and the samples a batch trains on were drawn at most k batches earlier.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from lit_posttrain.data.batches import Row
from lit_posttrain.rollout.types import Rollout

Position = tuple[int, int]
"""A training batch's place: (epoch, index in the epoch)."""


class SamplesAhead:
    """The draws ahead of training, by the position of the batch they are for: in flight (a
    `Future`) or done. Done draws are checkpointed (`state_dict`): a resumed run trains on the
    samples the uninterrupted one would have."""

    def __init__(self) -> None:
        self._worker: ThreadPoolExecutor | None = None
        self._drawn: dict[Position, tuple[list[list[int]], Future | Rollout]] = {}

    def __getstate__(self) -> dict:
        # Pickled with the module's hyperparameters, it is the empty setting; the draws themselves
        # go into checkpoints through `state_dict`.
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __contains__(self, position: Position) -> bool:
        return position in self._drawn

    def submit(self, position: Position, rows: list[Row], draw: Callable[[list[Row]], Rollout]) -> None:
        """Start drawing the samples of the batch at `position` (`rows`) with `draw`, in the worker."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lit-posttrain-ahead")
        self._drawn[position] = ([row.prompt_ids for row in rows], self._worker.submit(draw, rows))

    def take(self, position: Position, rows: list[Row]) -> tuple[Rollout | None, float]:
        """The samples drawn for the batch at `position`, waiting for them if still being drawn,
        and the seconds waited; None where none were drawn (the run's first batch). Draws for
        earlier positions (batches a run skipped) are dropped."""
        for stale in [p for p in self._drawn if p < position]:
            self._discard(stale)
        if position not in self._drawn:
            return None, 0.0
        prompts, drawn = self._drawn.pop(position)
        if prompts != [row.prompt_ids for row in rows]:
            raise RuntimeError(
                f"samples drawn ahead for batch {position[1]} of epoch {position[0]} answer other prompts than "
                "that batch holds: the loader's order and `train_batch_at` disagree"
            )
        start = time.perf_counter()
        rollout = drawn.result() if isinstance(drawn, Future) else drawn
        return rollout, time.perf_counter() - start

    def settle(self, raise_errors: bool = True) -> float:
        """Wait for every draw in flight (the engine may take new weights after this); the seconds
        waited. A draw that failed is dropped, and its error raised here (`raise_errors`)."""
        start = time.perf_counter()
        for position, (prompts, drawn) in list(self._drawn.items()):
            if isinstance(drawn, Future):
                try:
                    self._drawn[position] = (prompts, drawn.result())
                except Exception:
                    del self._drawn[position]  # drawn again, synchronously, when its batch comes
                    if raise_errors:
                        raise
        return time.perf_counter() - start

    def _discard(self, position: Position) -> None:
        _, drawn = self._drawn.pop(position)
        if isinstance(drawn, Future):
            drawn.cancel()

    def close(self) -> None:
        """Drop every draw (one running finishes first: the engine is closed after this)."""
        for position in list(self._drawn):
            self._discard(position)
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None

    def state_dict(self) -> list:
        # A checkpoint written as the run stops for a failed draw keeps the draws that succeeded.
        self.settle(raise_errors=False)
        return [(list(position), prompts, rollout.state_dict()) for position, (prompts, rollout) in self._drawn.items()]

    def load_state_dict(self, state: list) -> None:
        self.close()
        self._drawn = {tuple(position): (prompts, Rollout.from_state_dict(fields)) for position, prompts, fields in state}
