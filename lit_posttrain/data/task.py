"""The `Task` type: a named source of prompts, the way to score a completion, and, where it has
them, demonstrations. Training rewards, evaluation, HPT's gate and the forgetting probes all score
through the same object."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lit_posttrain.rewards import Verifier

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


class DataError(ValueError):
    """Malformed input data. The message names the file, the row and the field."""


@dataclass(frozen=True)
class Example:
    """One prompt of a task.

    `messages` is the prompt as a chat that ends with a user turn (plain-text prompts become a
    single user message; the tokenizer's chat template turns it into tokens). `answer` is what the
    verifier compares a completion against; `demonstration` is a reference completion (the SFT
    target, HPT's SFT route). `source` locates the row for error messages, e.g. "gsm8k.jsonl:row 12".
    """

    messages: list[Message]
    answer: str | None = None
    demonstration: str | None = None
    source: str = ""
    metadata: dict = field(default_factory=dict)


class Task:
    """Prompts plus their verifier. Subclasses fill `train_examples` and `eval_examples`.

    The held-out split never overlaps the training split; each subclass states how it ensures it.
    """

    name: str = "task"
    verifier: Verifier
    # The training reward's weighted parts (`lit_posttrain.rewards.functions`: verifiers, TRL reward
    # functions, verl's compute_score); empty: the task's own `reward`, its verifier's score.
    rewards: Sequence = ()

    def train_examples(self) -> Sequence[Example]:
        raise NotImplementedError

    def eval_examples(self) -> Sequence[Example]:
        raise NotImplementedError

    def check_demonstrations(self, method: str) -> None:
        """Refuse, naming where, training examples without a demonstration for `method`, which
        trains on them."""
        missing = [ex.source or f"example {i}" for i, ex in enumerate(self.train_examples()) if ex.demonstration is None]
        if missing:
            raise ValueError(
                f"{method} trains on demonstrations, but task {self.name!r} has none for {len(missing)} training "
                f"examples (first: {', '.join(missing[:3])}): each needs its demonstration, the field `completion` "
                "in prompt/completion rows or a final assistant turn in `messages` rows"
            )

    def reward_parts(self) -> list:
        """The parts the training reward sums, each `weight` times `part(completion, example)`,
        its mean logged under its `name` where the task lists them (`rewards`)."""
        return list(self.rewards) or [_OwnReward(self)]

    def reward(self, prompt: list[Message], completion: str, answer: str | None) -> float:
        """Score one completion. `prompt` is accepted so that prompt-aware rewards can subclass."""
        if answer is None:
            raise DataError(f"task {self.name!r} has no answer for prompt {prompt!r}: cannot score it")
        return float(self.verifier(completion, answer))


class _OwnReward:
    """A task's own `reward` as the one part of its training reward."""

    name, weight = "reward", 1.0

    def __init__(self, task: Task) -> None:
        self.task = task

    # Equal for one task, so that a scorer that ships the reward to worker processes
    # (`ProcessScorer`) sees the same reward step after step and ships it once.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, _OwnReward) and other.task is self.task

    def __hash__(self) -> int:
        return id(self.task)

    def __call__(self, completion: str, example: Example) -> float:
        return self.task.reward(example.messages, completion, example.answer)
