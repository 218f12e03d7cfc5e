"""The DataModule every method shares: a Task's examples, tokenized once at start-up with the
policy's tokenizer (in batches through `datasets`, cached on disk: `data.tokenize`), served as
micro-batches of token lists.

Batches hold token *lists*, not tensors: what a step needs differs by method (SFT packs prompt and
demonstration; RL methods sample from the prompt alone), so each method builds its tensors on its
own device from the same `Batch` (`data.batches`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lit_posttrain.data.batches import Batch, Batches, ResumableLoader, Row
from lit_posttrain.data.task import DataError, Example, Task
from lit_posttrain.data.tokenize import render_prompts, tokenize_texts
from lit_posttrain.models import cache_root
from lit_posttrain.padding import right_pad

log = logging.getLogger(__name__)

Overflow = Literal["error", "truncate", "skip"]


@dataclass
class OverflowCounts:
    prompts_truncated: int = 0
    completions_truncated: int = 0
    rows_skipped: int = 0


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase, example: Example, chat_template: bool | str = True, template_kwargs: dict | None = None
) -> list[int]:
    """The prompt's tokens: through the tokenizer's chat template (with the arguments it reads,
    `template_kwargs`), or its turns joined as plain text when `chat_template` is False."""
    (text,) = render_prompts(tokenizer, [example], chat_template, template_kwargs)
    return tokenizer(text, add_special_tokens=chat_template is False)["input_ids"]


def tokenize_rows(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_tokens: int,
    max_completion_tokens: int,
    overflow: Overflow,
    chat_template: bool | str = True,
    template_kwargs: dict | None = None,
    cache_dir: Path | None = None,
) -> tuple[list[Row], OverflowCounts]:
    """Tokenize every example (in batches, through `datasets`, cached in `cache_dir`:
    `data.tokenize`), applying the overflow policy to prompts and demonstrations that are longer
    than their limits. Every truncated or skipped row is counted: nothing is dropped silently."""
    counts = OverflowCounts()
    rows = []
    prompts = render_prompts(tokenizer, examples, chat_template, template_kwargs)
    demonstrations = [example.demonstration for example in examples]
    all_prompt_ids, all_completion_ids = tokenize_texts(tokenizer, prompts, demonstrations, chat_template is False, cache_dir)
    for example, prompt_ids, completion_ids in zip(examples, all_prompt_ids, all_completion_ids, strict=True):
        too_long = []
        if len(prompt_ids) > max_prompt_tokens:
            too_long.append(f"prompt has {len(prompt_ids)} tokens > max_prompt_tokens={max_prompt_tokens}")
        if completion_ids is not None and len(completion_ids) > max_completion_tokens:
            too_long.append(
                f"demonstration has {len(completion_ids)} tokens (EOS included) > "
                f"max_completion_tokens={max_completion_tokens}"
            )
        if too_long and overflow == "error":
            raise DataError(
                f"{example.source or 'example'}: {'; '.join(too_long)}. Raise the limit, or set "
                "data overflow to 'truncate' or 'skip' (affected rows are counted and logged)."
            )
        if too_long and overflow == "skip":
            counts.rows_skipped += 1
            continue
        if len(prompt_ids) > max_prompt_tokens:
            # Keep the end of the prompt: it holds the question and the assistant header.
            prompt_ids = prompt_ids[-max_prompt_tokens:]
            counts.prompts_truncated += 1
        if completion_ids is not None and len(completion_ids) > max_completion_tokens:
            completion_ids = completion_ids[:max_completion_tokens]
            counts.completions_truncated += 1
        rows.append(Row(example, prompt_ids, completion_ids))
    return rows, counts


class TaskDataModule(L.LightningDataModule):
    """Serves a Task's training and held-out examples, tokenized once with the policy's tokenizer.

    Args:
        task: the Task whose examples are served (its `train_examples` and `eval_examples`).
        batch_size: examples per optimizer step on each process (prompts, for the on-policy methods); the method splits them into micro-batches (its `micro_batching`) to bound memory.
        max_prompt_tokens: longest prompt, in tokens, after the chat template is applied.
        max_completion_tokens: longest demonstration, in tokens, EOS included.
        overflow: what to do with a row over either limit: "error" stops at start-up naming the row; "truncate" keeps the prompt's end and the demonstration's start; "skip" drops the row. Truncated and skipped rows are counted and logged.
        chat_template: how prompts become text: true, the tokenizer's chat template; false, the turns joined as plain text; a string, a Jinja chat template used instead of the tokenizer's (the template itself, or a path to a .jinja file); the trained model's folder keeps it.
        chat_template_kwargs: arguments the chat template reads, e.g. {enable_thinking: false}.
        shuffle: reshuffle the training examples every epoch (deterministic by seed and epoch).
        seed: seed of the shuffle.
        eval_batch_size: examples per held-out batch; defaults to batch_size.
    """

    def __init__(
        self,
        task: Task,
        batch_size: int = 8,
        max_prompt_tokens: int = 512,
        max_completion_tokens: int = 256,
        overflow: Overflow = "error",
        chat_template: bool | str = True,
        chat_template_kwargs: dict | None = None,
        shuffle: bool = True,
        seed: int = 0,
        eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data batch_size must be at least 1, got {batch_size}")
        self.task = task
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.max_prompt_tokens, self.max_completion_tokens = max_prompt_tokens, max_completion_tokens
        self.overflow, self.chat_template = overflow, chat_template
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.shuffle, self.seed = shuffle, seed
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_rows: list[Row] | None = None
        self.eval_rows: list[Row] | None = None

    def setup(self, stage: str) -> None:
        if self.train_rows is not None:
            return
        if self.tokenizer is None:
            # The module owns the tokenizer: one source of truth for how text becomes tokens.
            self.tokenizer = self.trainer.lightning_module.tokenizer
        if isinstance(self.chat_template, str):
            self.tokenizer.chat_template = read_template(self.chat_template)
        self.announce_prompt_format()
        with self._first_process_first():
            self.train_rows, train_counts = self.tokenize(self.task.train_examples(), f"task {self.task.name!r} train split")
            self.eval_rows, eval_counts = self.tokenize(self.task.eval_examples(), f"task {self.task.name!r} eval split")
        if not self.train_rows:
            raise DataError(f"task {self.task.name!r} has no training rows left (overflow={self.overflow!r})")
        self.overflow_counts = {"train": train_counts, "eval": eval_counts}
        if self.trainer is not None:
            counts = {f"data/{split}_{k}": v for split, c in self.overflow_counts.items() for k, v in vars(c).items()}
            for logger in self.trainer.loggers:
                logger.log_metrics(counts, step=0)

    def announce_prompt_format(self) -> None:
        """Say in the run's first lines how prompts become text, with the first training prompt as
        the model will see it; a template that fails on it stops the run here."""
        if self.chat_template is False:
            how = "plain text (data.chat_template: false): each prompt's turns joined by blank lines"
        elif isinstance(self.chat_template, str):
            how = "the chat template data.chat_template gives" + (f" ({self.chat_template})" if self.chat_template.endswith(".jinja") else "")
        else:
            how = f"the tokenizer's chat template ({getattr(self.tokenizer, 'name_or_path', '') or 'the model folder'})"
        if self.chat_template_kwargs:
            how += f", with {self.chat_template_kwargs}"
        first = self.task.train_examples()[0]
        try:
            ids = tokenize_prompt(self.tokenizer, first, self.chat_template, self.chat_template_kwargs)
        except Exception as err:  # jinja raises its own types
            raise ValueError(f"data.chat_template: formatting {first.source or 'the first training prompt'} failed: {err}") from err
        text = self.tokenizer.decode(ids)
        shown = text if len(text) <= 400 else text[:200] + " [...] " + text[-200:]
        rank_zero_info(f"prompts: {how}. The first training prompt as the model sees it:\n{shown}")

    @contextlib.contextmanager
    def _first_process_first(self) -> Iterator[None]:
        """Under several processes, the first of each machine tokenizes (writing the cache) while
        the others wait, then they tokenize, reading it. A bad row raises in the first process
        after it has let the others go: they find it too and stop, nobody waits forever."""
        trainer = self.trainer
        several = trainer is not None and trainer.world_size > 1
        first = not several or trainer.local_rank == 0
        if not first:
            trainer.strategy.barrier("tokenize")
        try:
            yield
        finally:
            if several and first:
                trainer.strategy.barrier("tokenize")

    def tokenize(self, examples: Sequence[Example], label: str) -> tuple[list[Row], OverflowCounts]:
        """Rows under this module's limits and overflow policy; over-long rows are counted and logged."""
        rows, counts = tokenize_rows(
            examples,
            self.tokenizer,
            self.max_prompt_tokens,
            self.max_completion_tokens,
            self.overflow,
            self.chat_template,
            self.chat_template_kwargs,
            cache_root() / "tokenized",
        )
        if counts.prompts_truncated or counts.completions_truncated or counts.rows_skipped:
            log.warning(
                "%s: %d prompts truncated, %d demonstrations truncated, %d rows skipped "
                "(overflow=%r, max_prompt_tokens=%d, max_completion_tokens=%d)",
                label, counts.prompts_truncated, counts.completions_truncated,
                counts.rows_skipped, self.overflow, self.max_prompt_tokens, self.max_completion_tokens,
            )  # fmt: skip
        return rows, counts

    def _loader(self, rows: list[Row], batch_size: int, shuffle: bool) -> DataLoader:
        trainer = self.trainer
        dataset = Batches(
            rows,
            batch_size,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            shuffle=shuffle,
            seed=self.seed,
            epoch_fn=(lambda: trainer.current_epoch) if trainer else (lambda: 0),
        )
        # batch_size=None: the dataset yields whole batches.
        # `processed`, not `completed`: ModelCheckpoint saves in on_train_batch_end, after the batch
        # was trained on but before Lightning counts it completed.
        progress = (lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer else (lambda: 0)
        return ResumableLoader(dataset, progress)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # Batches are token lists; methods build their tensors directly on their own device.
        return batch

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_rows, self.batch_size, self.shuffle)
        self._train_batches = loader.dataset
        return loader

    def train_batch_at(self, epoch: int, index: int) -> Batch | None:
        """This process's training batch `index` of `epoch` (None past the epoch's end), the same
        rows the loader yields there: samples drawn ahead of training (`RolloutSource.max_staleness`)
        are drawn for them."""
        return self._train_batches.batch_at(epoch, index)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_rows, self.eval_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def pack_demonstrations(rows: Sequence[Row], pad_id: int, device=None):
    """Prompt + demonstration per row, right-padded: `(tokens_BT, attention_BT, loss_mask_BT)`.

    `loss_mask_BT` marks demonstration tokens (EOS included); prompt and padding are masked out.
    """
    missing = [row.example.source or str(i) for i, row in enumerate(rows) if row.completion_ids is None]
    if missing:
        raise DataError(f"rows without a demonstration cannot be trained on with SFT: {', '.join(missing[:5])}")
    tokens_BT, attention_BT = right_pad([row.prompt_ids + row.completion_ids for row in rows], pad_id)
    prompt_B = torch.tensor([len(row.prompt_ids) for row in rows])
    loss_mask_BT = (torch.arange(tokens_BT.shape[1]) >= prompt_B[:, None]) & attention_BT.bool()
    return tokens_BT.to(device), attention_BT.to(device), loss_mask_BT.to(device)


def read_template(value: str) -> str:
    """A chat template given in the config: the template itself, or a path to a .jinja file."""
    if value.endswith(".jinja"):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"data.chat_template: {value}: no such file")
        return path.read_text(encoding="utf-8")
    if "{%" not in value and "{{" not in value:
        raise ValueError(f"data.chat_template: {value[:60]!r} is neither a Jinja template nor a path to a .jinja file")
    return value
