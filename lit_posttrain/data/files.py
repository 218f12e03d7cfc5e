"""`FileTask`: a task read from data files or a hub dataset."""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path

from lit_posttrain.data.formats import RowFormat
from lit_posttrain.data.loaders import check_columns, load_examples
from lit_posttrain.data.sources import READERS
from lit_posttrain.data.task import DataError, Example, Task
from lit_posttrain.rewards import ExactMatch, Verifier
from lit_posttrain.rewards.functions import Reward


class FileTask(Task):
    """Prompts from a data file (or hub dataset), scored by a verifier.

    The held-out split never overlaps the training split: without an `eval` source it is a seeded
    random subset of the training rows, taken out of them; either way, held-out rows whose prompt
    also appears in the training split (duplicates in the data) are dropped with a warning.

    For GSM8K-style data pick `NumericMatch(extract="last")` as the verifier in the YAML config;
    for MATH-style data, `MathVerifier()`.

    Args:
        train: Training rows: a .jsonl/.json/.parquet/.csv file, a glob or a folder of them, a save_to_disk folder, or a hub id owner/name[:config].
        eval: Held-out rows, in the same forms; split off `train` when None.
        verifier: Scores a completion against a row's answer.
        format: Row format (PromptCompletion, Messages, GSM8K, MATH, Verl); detected from the columns when None.
        columns: Which of your columns fill which field, e.g. {prompt: question, answer: final_answer}; a dotted name reads nested dicts (answer: reward_model.ground_truth).
        max_samples: Read at most this many rows of each source (before the held-out split).
        train_split: The split `train` names in a hub dataset or a save_to_disk folder.
        eval_split: The split `eval` names there.
        revision: The hub dataset's branch, tag or commit.
        rewards: The training reward as a weighted sum of parts (Verified, TRLReward, VerlScore from lit_posttrain.rewards.functions), each part's mean logged as train/rewards/<name>; by default the verifier's score. Held-out accuracy stays the verifier's.
        system_prompt: System message prepended to every prompt.
        prompt_template: str.format template applied to the user prompt, with a {prompt} field.
        eval_fraction: Fraction of the training rows held out when `eval` is None.
        seed: Seed of the held-out split.
        name: Task name in logs and metrics; the train file's name when None.
    """

    def __init__(
        self,
        train: str,
        eval: str | None = None,
        # ExactMatch is a frozen dataclass, so every FileTask sharing the default instance is safe.
        verifier: Verifier = ExactMatch(strip=True),  # noqa: B008
        format: RowFormat | None = None,
        system_prompt: str | None = None,
        prompt_template: str | None = None,
        eval_fraction: float = 0.1,
        seed: int = 0,
        name: str | None = None,
        columns: dict[str, str] | None = None,
        max_samples: int | None = None,
        train_split: str = "train",
        eval_split: str = "test",
        revision: str | None = None,
        rewards: list[Reward] | None = None,
    ) -> None:
        if eval is None and not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be at least 1 or null, got {max_samples}")
        check_columns(columns)
        self.columns, self.max_samples, self.revision = columns, max_samples, revision
        self.train_split, self.eval_split = train_split, eval_split
        names = [part.name for part in rewards or ()]
        if len(set(names)) < len(names):
            raise ValueError(f"rewards: each part needs its own name (`name:`), got {names}")
        self.rewards = tuple(rewards or ())
        self.train = train
        self.eval = eval
        self.verifier = verifier
        self.format = format
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.eval_fraction = eval_fraction
        self.seed = seed
        # "data/gsm8k.jsonl" -> "gsm8k", "openai/gsm8k:main" -> "gsm8k", "data/train-*.parquet" -> "train"
        path = Path(train.split(":")[0])
        suffixes = "|".join(re.escape(suffix) for suffix in READERS)
        stem = re.sub(r"[-_.]*[*?\[].*$", "", re.sub(rf"({suffixes})$", "", path.name))
        self.name = name or stem or path.parent.name or "data"
        self._splits: tuple[list[Example], list[Example]] | None = None

    def train_examples(self) -> list[Example]:
        return self._load()[0]

    def eval_examples(self) -> list[Example]:
        return self._load()[1]

    def _load(self) -> tuple[list[Example], list[Example]]:
        if self._splits is None:
            train = self._read(self.train, self.train_split)
            if self.eval is None:
                train, held_out = self._split(train)
            else:
                held_out = self._read(self.eval, self.eval_split)
            self._splits = train, _drop_overlap(train, held_out, self.name)
        return self._splits

    def _read(self, source: str, split: str) -> list[Example]:
        return load_examples(
            source,
            split=split,
            format=self.format,
            system_prompt=self.system_prompt,
            prompt_template=self.prompt_template,
            limit=self.max_samples,
            columns=self.columns,
            revision=self.revision,
        )

    def _split(self, examples: list[Example]) -> tuple[list[Example], list[Example]]:
        if len(examples) < 2:
            raise DataError(
                f"task {self.name!r}: {self.train} has {len(examples)} row(s), too few to hold some out; "
                "pass an `eval` source"
            )
        n_eval = min(len(examples) - 1, max(1, round(len(examples) * self.eval_fraction)))
        order = list(range(len(examples)))
        random.Random(self.seed).shuffle(order)
        held_out = set(order[:n_eval])
        # Both splits keep file order, so logs and metrics follow the file.
        return (
            [ex for i, ex in enumerate(examples) if i not in held_out],
            [ex for i, ex in enumerate(examples) if i in held_out],
        )


def _prompt_key(example: Example) -> tuple:
    return tuple((m["role"], m["content"]) for m in example.messages)


def _drop_overlap(train: list[Example], held_out: list[Example], name: str) -> list[Example]:
    seen = {_prompt_key(ex) for ex in train}
    kept = [ex for ex in held_out if _prompt_key(ex) not in seen]
    if len(kept) < len(held_out):
        dropped = next(ex for ex in held_out if _prompt_key(ex) in seen)
        warnings.warn(
            f"task {name!r}: dropped {len(held_out) - len(kept)} held-out row(s) whose prompt is also in "
            f"the training split (first: {dropped.source})",
            stacklevel=4,
        )
    if not kept:
        raise DataError(f"task {name!r}: every held-out prompt is also a training prompt")
    return kept
