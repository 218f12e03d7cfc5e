"""The rollout-engine protocol and the helpers every engine shares."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_posttrain.rollout.types import Rollout


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples completions from the current policy.

    `setup` is called once the policy exists, `sync_weights` after every optimizer step (an
    engine that samples from a copy of the weights refreshes it there), `generate` samples `n`
    completions for each prompt (rows of one prompt are contiguous; `group_B` numbers them).
    """

    max_new_tokens: int
    temperature: float

    def setup(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None: ...

    def sync_weights(self, policy: torch.nn.Module) -> None: ...

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int = 1,
        *,
        temperature: float | None = None,
        greedy: bool = False,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> Rollout: ...


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """`(tokens_BT, attention_BT)` with every prompt right-aligned."""
    width = max(len(p) for p in prompt_ids)
    tokens_BT = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_BT = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for b, ids in enumerate(prompt_ids):
        tokens_BT[b, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_BT[b, width - len(ids) :] = 1
    return tokens_BT, attention_BT


def completion_mask(completion_BT: Tensor, eos_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Mask of completion tokens up to and including the first EOS, and which rows never stopped.

    Built from EOS, never from `!= pad_id`: many tokenizers pad with their EOS token.
    """
    is_eos_BT = torch.isin(completion_BT, eos_ids)
    eos_before_BT = is_eos_BT.long().cumsum(-1) - is_eos_BT.long()  # EOS strictly before each position
    return eos_before_BT == 0, ~is_eos_BT.any(-1)


def last_position(tokens_BT: Tensor) -> Tensor:
    """`logits_to_keep` for the last position only, as an index tensor: an int makes transformers
    take a strided slice of the hidden states, which sends the output head down a batched-matmul
    path that copies its weight per row on CPU (see PostTrainingModule.forward_logits)."""
    return torch.tensor([tokens_BT.shape[1] - 1], device=tokens_BT.device)
