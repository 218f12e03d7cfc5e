"""The built-in arithmetic task: integer problems generated from a seed, scored by a strict verifier.

It needs no download, a pretrained model starts well below perfect on it, and its answers are
checkable exactly, which makes it the smoke test and the quickstart of every method.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Sequence
from functools import cached_property

from lit_posttrain.data.task import Example, Task
from lit_posttrain.rewards import ExactMatch, Verifier

OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


class Arithmetic(Task):
    """Problems `a op b` with non-negative integer operands; the answer is the result's digits.

    Problems are drawn without replacement from one seeded stream: first the worked examples shown
    in the prompt, then the held-out split, then the training split. No problem appears twice, so
    the splits never overlap, and the held-out split does not change when `num_train` does.
    Subtraction draws `a >= b`, so no answer is negative.

    Args:
        ops: operations to draw from, any of "+", "-", "*".
        digits: operands have at most this many digits (0 to 10**digits - 1).
        max_operand: the largest operand, overriding digits (e.g. 20: operands 0 to 20).
        num_train: number of training problems.
        num_eval: number of held-out problems.
        shots: worked examples shown before the question as earlier chat turns (a user question answered with just the number).
        template: the user message; {a}, {op} and {b} are filled in.
        demonstration: the training examples' demonstration (what SFT-style methods imitate); {a}, {op}, {b} and {answer} are filled in. The default is the bare answer, which the strict verifier accepts; another style (a worked sentence, say) needs a verifier that accepts it, e.g. NumericMatch(extract: last).
        system_prompt: an optional system message (null: the tokenizer's chat template decides).
        verifier: how a completion is scored; the default is strict: the completion must be exactly the answer.
        seed: seed of the problem stream.
    """

    def __init__(
        self,
        ops: Sequence[str] = ("+",),
        digits: int = 2,
        max_operand: int | None = None,
        num_train: int = 256,
        num_eval: int = 64,
        shots: int = 1,
        template: str = "What is {a} {op} {b}? Reply with only the number.",
        demonstration: str = "{answer}",
        system_prompt: str | None = None,
        verifier: Verifier | None = None,
        seed: int = 0,
    ) -> None:
        unknown = [op for op in ops if op not in OPERATIONS]
        if unknown or not ops:
            raise ValueError(f"Arithmetic ops: {list(ops)!r} has unknown operations {unknown}; choose from {list(OPERATIONS)}")
        if digits < 1:
            raise ValueError(f"Arithmetic digits must be at least 1, got {digits}")
        if max_operand is not None and max_operand < 1:
            raise ValueError(f"Arithmetic max_operand must be at least 1, got {max_operand}")
        if min(num_train, num_eval, shots) < 0:
            raise ValueError("Arithmetic num_train, num_eval and shots must be non-negative")
        for field in ("{a}", "{op}", "{b}"):
            if field not in template:
                raise ValueError(f"Arithmetic template {template!r} must contain {field}")
        if "{answer}" not in demonstration:
            raise ValueError(f"Arithmetic demonstration {demonstration!r} must contain {{answer}}")
        try:
            demonstration.format(a=0, op="+", b=0, answer=0)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"Arithmetic demonstration {demonstration!r}: only {{a}}, {{op}}, {{b}} and {{answer}} can be filled in ({err!r})") from None
        self.ops, self.digits = list(ops), digits
        self.operands = max_operand + 1 if max_operand is not None else 10**digits  # operands 0 .. operands - 1
        self.num_train, self.num_eval, self.shots = num_train, num_eval, shots
        self.template, self.demonstration, self.system_prompt = template, demonstration, system_prompt
        self.verifier = verifier or ExactMatch()
        self.seed = seed
        self.name = f"arithmetic[{''.join(self.ops)},0..{self.operands - 1}]"
        needed, available = shots + num_eval + num_train, self.num_problems()
        if needed > available:
            raise ValueError(
                f"Arithmetic: shots + num_eval + num_train = {needed} distinct problems requested, but ops "
                f"{self.ops} with operands 0..{self.operands - 1} have only {available}"
            )

    def num_problems(self) -> int:
        n = self.operands
        return sum(n * (n + 1) // 2 if op == "-" else n * n for op in self.ops)

    @cached_property
    def _problems(self) -> list[tuple[int, str, int]]:
        rng = random.Random(self.seed)
        n = self.operands
        seen: set[tuple[int, str, int]] = set()
        problems = []
        while len(problems) < self.shots + self.num_eval + self.num_train:
            op, a, b = rng.choice(self.ops), rng.randrange(n), rng.randrange(n)
            if op == "-" and a < b:
                a, b = b, a
            if (a, op, b) not in seen:
                seen.add((a, op, b))
                problems.append((a, op, b))
        return problems

    def _question(self, a: int, op: str, b: int) -> str:
        return self.template.format(a=a, op=op, b=b)

    @cached_property
    def _prefix(self) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for a, op, b in self._problems[: self.shots]:
            messages.append({"role": "user", "content": self._question(a, op, b)})
            messages.append({"role": "assistant", "content": str(OPERATIONS[op](a, b))})
        return messages

    def _examples(self, start: int, stop: int, split: str) -> list[Example]:
        examples = []
        for i, (a, op, b) in enumerate(self._problems[start:stop]):
            answer = str(OPERATIONS[op](a, b))
            messages = [*self._prefix, {"role": "user", "content": self._question(a, op, b)}]
            demonstration = self.demonstration.format(a=a, op=op, b=b, answer=answer)
            examples.append(Example(messages, answer=answer, demonstration=demonstration, source=f"{self.name} {split} {i}"))
        return examples

    def eval_examples(self) -> list[Example]:
        return self._examples(self.shots, self.shots + self.num_eval, "eval")

    def train_examples(self) -> list[Example]:
        start = self.shots + self.num_eval
        return self._examples(start, start + self.num_train, "train")
