"""A task whose answers need long reasoning: add a list of numbers one at a time, writing every
running total out, then the sum. Generated from a seed (nothing downloaded), checkable exactly, and
as long as asked: 40 three-digit terms make a worked answer of about 500 tokens with the built-in
model's tokenizer (one token a digit). The demonstrations are the worked answers, so the methods
that imitate (SFT, HPT's SFT side, OTR) train on it too.
"""

from __future__ import annotations

import random

from lit_posttrain.data.task import Example, Task
from lit_posttrain.rewards import NumericMatch, Verifier

PROMPT = (
    "Add these {terms} numbers one at a time. Write each step on its own line as "
    "`running total + next number = new total`, then the final sum on a last line as `Answer: N`.\n{numbers}"
)


class RunningSum(Task):
    """Sums of `terms` random numbers of up to `digits` digits, worked one addition a line.

    Held-out and training lists come from one seeded stream (held-out first), so the held-out split
    does not change with `num_train`; a list drawn twice is drawn again, so the splits never overlap.

    Args:
        terms: numbers to add; the worked answer has one line per addition.
        digits: each number has at most this many digits.
        num_train: number of training lists.
        num_eval: number of held-out lists.
        verifier: how a completion is scored; by default the last number in it must be the sum.
        seed: seed of the stream.
    """

    def __init__(
        self,
        terms: int = 40,
        digits: int = 3,
        num_train: int = 512,
        num_eval: int = 64,
        verifier: Verifier | None = None,
        seed: int = 0,
    ) -> None:
        if terms < 2 or digits < 1 or min(num_train, num_eval) < 0:
            raise ValueError(f"RunningSum needs terms >= 2, digits >= 1 and non-negative sizes, got {terms}, {digits}, {num_train}, {num_eval}")
        self.terms, self.digits, self.num_train, self.num_eval, self.seed = terms, digits, num_train, num_eval, seed
        self.verifier = verifier or NumericMatch(extract="last")
        self.name = f"running_sum[{terms}x{digits}]"
        rng, seen, self._lists = random.Random(seed), set(), []
        while len(self._lists) < num_eval + num_train:
            numbers = tuple(rng.randrange(10**digits) for _ in range(terms))
            if numbers not in seen:
                seen.add(numbers)
                self._lists.append(numbers)

    @staticmethod
    def worked(numbers: tuple[int, ...]) -> str:
        """The worked answer: one addition a line, then `Answer: <sum>`."""
        lines, total = [], numbers[0]
        for n in numbers[1:]:
            lines.append(f"{total} + {n} = {total + n}")
            total += n
        return "\n".join([*lines, f"Answer: {total}"])

    def _examples(self, lists: list[tuple[int, ...]], split: str) -> list[Example]:
        return [
            Example(
                [{"role": "user", "content": PROMPT.format(terms=self.terms, numbers=", ".join(map(str, numbers)))}],
                answer=str(sum(numbers)), demonstration=self.worked(numbers), source=f"{self.name} {split} {i}",
            )  # fmt: skip
            for i, numbers in enumerate(lists)
        ]

    def eval_examples(self) -> list[Example]:
        return self._examples(self._lists[: self.num_eval], "eval")

    def train_examples(self) -> list[Example]:
        return self._examples(self._lists[self.num_eval :], "train")
