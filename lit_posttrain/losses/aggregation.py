"""Aggregations: per-token losses to one number, the unified policy-gradient estimator's last
part (`losses.policy_gradient`). Each divides by the whole optimizer step's `Counts`, so that a
loss taken over part of a step (some of its rows, one micro-batch) adds up to the single pass's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Counts:
    """What an aggregation divides by: the rows and completion tokens of the whole optimizer step.

    A loss taken over part of the step (the rows whose forward pass runs, one micro-batch) is
    normalised by the step's counts, so that the parts' losses add up to the loss of one pass
    over every row (DAPO's and verl's global token normalisation)."""

    rows: int
    tokens: float | Tensor

    @classmethod
    def of(cls, mask_BT: Tensor) -> Counts:
        """The counts of the rows in `mask_BT`, as if they were the whole step."""
        return cls(rows=mask_BT.shape[0], tokens=mask_BT.sum())


class Aggregation:
    """Base of the aggregations: per-token losses (and their mask) to one number, normalised by
    `counts` (default: these rows' own)."""

    def __call__(self, loss_BT: Tensor, mask_BT: Tensor, counts: Counts | None = None) -> Tensor:
        raise NotImplementedError

    def for_budget(self, max_new_tokens: int) -> Aggregation:
        """This aggregation for completions of at most `max_new_tokens` (the sampler's budget)."""
        return self


@dataclass(frozen=True)
class SequenceMean(Aggregation):
    """GRPO's original: mean over each sequence's tokens, then over the step's sequences."""

    def __call__(self, loss_BT: Tensor, mask_BT: Tensor, counts: Counts | None = None) -> Tensor:
        per_sequence_B = (loss_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1)
        return per_sequence_B.sum() / max((counts or Counts.of(mask_BT)).rows, 1)


@dataclass(frozen=True)
class TokenMean(Aggregation):
    """Sum over every token divided by the step's token count (DAPO, BNPO, SFT)."""

    def __call__(self, loss_BT: Tensor, mask_BT: Tensor, counts: Counts | None = None) -> Tensor:
        tokens = (counts or Counts.of(mask_BT)).tokens
        return (loss_BT * mask_BT).sum() / torch.as_tensor(tokens, dtype=loss_BT.dtype).clamp(min=1)


@dataclass(frozen=True)
class ConstantLength(Aggregation):
    """Dr.GRPO: sum over tokens divided by `rows * max_tokens`, a constant, so that long and short
    completions are not weighted differently. `max_tokens` defaults to the completion budget, the
    sampler's `max_new_tokens` (Dr.GRPO's "generation budget", TRL's `max_completion_length`)."""

    max_tokens: int | None = None

    def __call__(self, loss_BT: Tensor, mask_BT: Tensor, counts: Counts | None = None) -> Tensor:
        if self.max_tokens is None:
            raise ValueError("ConstantLength needs max_tokens: set it, or let the method fill in its sampler's max_new_tokens")
        return (loss_BT * mask_BT).sum() / (max((counts or Counts.of(mask_BT)).rows, 1) * self.max_tokens)

    def for_budget(self, max_new_tokens: int) -> Aggregation:
        return self if self.max_tokens is not None else dataclasses.replace(self, max_tokens=max_new_tokens)
