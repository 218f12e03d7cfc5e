"""Advantages: rewards and group ids (the rows answering one prompt) to one advantage per
sequence, the unified policy-gradient estimator's advantage part (`losses.policy_gradient`). Pure
functions of tensors, each selectable by `class_path`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lit_posttrain.groups import dense_groups, group_mean_std, group_reduce


class Advantage:
    """Base of the advantages: rewards and group ids to one advantage per sequence."""

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        raise NotImplementedError


def group_centred(reward_B: Tensor, group_B: Tensor) -> tuple[Tensor, Tensor]:
    """`(r - mean of the group, std of the group)` per row, the first exactly 0 in a group whose
    rewards are all equal. Not left to arithmetic: the float32 mean of rewards like 0.1 or 0.7 is a
    few ulps off, and divided by a std of the same size that made advantages of up to 1e-3 with an
    arbitrary sign, which skipping zero-advantage rows then did not skip."""
    mean_B, std_B = group_mean_std(reward_B, group_B)
    dense_B, _ = dense_groups(group_B)
    equal_B = (group_reduce(reward_B, group_B, "amax") == group_reduce(reward_B, group_B, "amin"))[dense_B]
    return torch.where(equal_B, 0.0, reward_B.float() - mean_B), std_B


@dataclass(frozen=True)
class GroupNormalized(Advantage):
    """GRPO: `(r - mean of the group) / (std of the group + eps)`. A group whose rewards are all
    equal gets exactly zero advantage, never NaN."""

    eps: float = 1e-4

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        centred_B, std_B = group_centred(reward_B, group_B)
        return centred_B / (std_B + self.eps)


@dataclass(frozen=True)
class BatchNormalized(Advantage):
    """Centred within the group, scaled by the whole batch's reward std (Lite PPO / REINFORCE++)."""

    eps: float = 1e-4

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        centred_B, _ = group_centred(reward_B, group_B)
        std = reward_B.float().std() if len(reward_B) > 1 else reward_B.new_zeros((), dtype=torch.float32)
        return centred_B / (std + self.eps)


@dataclass(frozen=True)
class GroupCentered(Advantage):
    """Dr.GRPO: `r - mean of the group`, no scaling (std scaling favours easy and hard prompts)."""

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        return group_centred(reward_B, group_B)[0]


@dataclass(frozen=True)
class Reward(Advantage):
    """The reward itself, no baseline. With a 0/1 verifier this is SFT on the model's own accepted
    samples (rejection-sampling fine-tuning, the "Self-SFT" of arXiv 2510.18874), refreshed every
    step: a rejected sample adds no gradient, an accepted one is trained as a demonstration."""

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        return reward_B.float()


@dataclass(frozen=True)
class Constant(Advantage):
    """The same advantage for every sequence: 1 for SFT on demonstrations."""

    value: float = 1.0

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        return torch.full(group_B.shape, self.value, dtype=torch.float32, device=group_B.device)
