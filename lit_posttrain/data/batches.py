"""How the rows reach the steps: the tokenized `Row`, the `Batch` of rows a step gets (the method
splits it into micro-batches), shuffled batches, and a loader whose position in the epoch survives
a resume."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch.utils.data import DataLoader, IterableDataset

from lit_posttrain.data.task import Example


@dataclass(frozen=True)
class Row:
    """One tokenized example. `completion_ids` is the demonstration followed by EOS (no EOS when
    the demonstration was truncated: the model must not learn to stop where the text was cut)."""

    example: Example
    prompt_ids: list[int]
    completion_ids: list[int] | None


@dataclass(frozen=True)
class Batch:
    """One process's rows of an optimizer step (a training step), or of an evaluation batch."""

    rows: list[Row]

    def __len__(self) -> int:
        return len(self.rows)


class Batches(IterableDataset):
    """Shuffled batches: every rank draws the same permutation (same seed and epoch) and takes its
    own slice of each global batch of `batch_size x world_size` rows."""

    def __init__(
        self,
        rows: list[Row],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        epoch_fn: Callable[[], int] = lambda: 0,
    ) -> None:
        self.rows, self.batch_size = rows, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.epoch_fn = shuffle, seed, epoch_fn
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches trained on), set on resume
        self._order: list[list[Row]] = []
        self._order_of: int | None = None  # the epoch `_order` holds (`batch_at`)

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        return -(-len(self.rows) // global_batch)

    def _global_batches(self, epoch: int) -> list[list[Row]]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        global_batch = self.batch_size * self.world_size
        return [[self.rows[i] for i in order[s : s + global_batch]] for s in range(0, len(order), global_batch)]

    def batch_at(self, epoch: int, index: int) -> Batch | None:
        """This process's batch `index` of `epoch`, as iteration will yield it (None past the
        epoch's end): what a method drawing samples ahead of training reads."""
        if self._order_of != epoch:  # one epoch's order kept, rebuilt when it moves on
            self._order, self._order_of = self._global_batches(epoch), epoch
        return Batch(self._order[index][self.rank :: self.world_size]) if 0 <= index < len(self._order) else None

    def __iter__(self) -> Iterator[Batch]:
        # A generator: this runs at the first next(), after Lightning restored a checkpoint, so a
        # resumed epoch skips the batches it had already trained on. A checkpoint taken at an
        # epoch's last batch resumes in the next epoch, which skips nothing.
        epoch = self.epoch_fn()
        skip = self.resume_at[1] if self.resume_at is not None and self.resume_at[0] == epoch else 0
        self.resume_at = None
        for global_rows in self._global_batches(epoch)[skip:]:
            # Round-robin so that a short last batch still gives every rank what it can.
            yield Batch(global_rows[self.rank :: self.world_size])


class ResumableLoader(DataLoader):
    """A loader whose position is saved in Lightning's checkpoints: the epoch and the number of its
    batches already trained on. On resume the epoch's order is rebuilt from the seed and the epoch
    and that many batches are skipped, so no example is repeated or lost."""

    def __init__(self, dataset: Batches, progress: Callable[[], int]) -> None:
        super().__init__(dataset, batch_size=None)
        self.progress = progress

    def state_dict(self) -> dict:
        return {"epoch": int(self.dataset.epoch_fn()), "trained": int(self.progress())}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.resume_at = (int(state["epoch"]), int(state["trained"]))
