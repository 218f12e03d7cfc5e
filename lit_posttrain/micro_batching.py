"""How a step's rows are split into micro-batches: each runs its forward and backward on its own,
so a step's memory grows with the micro-batch, not with the batch.

A micro-batch's size is what its forward pass holds: its rows, each padded to the micro-batch's
widest prompt plus its longest completion. Rows are packed longest first (so that rows of alike
lengths share a micro-batch and little of it is padding), each micro-batch filled while it stays
within the budget, as verl's dynamic batch size does by token count. The losses divide by the
whole step's counts (`losses.aggregation.Counts`), so the micro-batches' gradients add up to the
single pass's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MicroBatching:
    """How many padded tokens and rows one forward pass of a step may hold.

    Args:
        max_tokens: most tokens in a micro-batch, counted as its rows times (widest prompt + longest completion); null: no bound.
        max_rows: most rows in a micro-batch; null: no bound.
    """

    max_tokens: int | None = 4096
    max_rows: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"micro_batching {name} must be at least 1 or null, got {value}")

    def fits(self, prompt: int, completion: int) -> bool:
        """Whether one row of `prompt` + `completion` tokens fits a micro-batch."""
        return self.max_tokens is None or prompt + completion <= self.max_tokens

    def split(self, prompt_B: Sequence[int], completion_B: Sequence[int]) -> list[list[int]]:
        """Row indices of each micro-batch, ascending within each (a rollout's groups stay
        contiguous), for rows of `prompt_B[i]` prompt and `completion_B[i]` completion tokens. A row
        that alone exceeds `max_tokens` is refused, with its size: nothing is cut."""
        for i, (p, c) in enumerate(zip(prompt_B, completion_B, strict=True)):
            if not self.fits(p, c):
                raise ValueError(
                    f"row {i} of this step has {p} prompt + {c} completion = {p + c} tokens, more than "
                    f"micro_batching.max_tokens = {self.max_tokens}: raise it (one row must fit a micro-batch)"
                )
        order = sorted(range(len(prompt_B)), key=lambda i: prompt_B[i] + completion_B[i], reverse=True)
        parts: list[list[int]] = []
        widest = longest = 0
        for i in order:
            w, c = max(widest, prompt_B[i]), max(longest, completion_B[i])
            full_rows = self.max_rows is not None and parts and len(parts[-1]) >= self.max_rows
            full_tokens = self.max_tokens is not None and parts and (len(parts[-1]) + 1) * (w + c) > self.max_tokens
            if not parts or full_rows or full_tokens:
                parts.append([])
                w, c = prompt_B[i], completion_B[i]
            parts[-1].append(i)
            widest, longest = w, c
        return [sorted(part) for part in parts]
