"""The `Rollout` batch type shared by every method, whatever produced it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lit_posttrain.groups import dense_groups


@dataclass(frozen=True)
class Rollout:
    """Sampled completions, one row per sequence.

    Each row is its prompt, left-padded to `prompt_width`, followed by its completion, right-padded.
    `mask_BT` marks completion tokens up to and including the first EOS; `logp_BT` holds the
    sampler's log-probs of those tokens (under the sampling distribution: temperature, top-k and
    top-p applied) and 0 elsewhere. `group_B` says which prompt of the batch a row answers; rows of
    one group are contiguous. `truncated_B` marks completions that hit `max_new_tokens` before EOS.
    `reward_B` is filled in by scoring (`with_rewards`); `age_B` counts optimizer steps since a
    row was sampled (0: sampled by the current weights). `old_logp_BT`, where a step takes several
    optimizer steps on one rollout batch, holds the trainer's log-probs before the first: pi_old.
    `reward_parts` holds each part's score per row where a task's reward has named parts.
    `version_B` is the optimizer step whose weights drew each row: behind the step being trained
    where samples are drawn ahead of training (`RolloutSource.max_staleness`).
    """

    tokens_BT: Tensor
    attention_BT: Tensor
    mask_BT: Tensor
    logp_BT: Tensor
    group_B: Tensor
    truncated_B: Tensor
    prompt_width: int
    completions: list[str]
    temperature: float = 1.0
    reward_B: Tensor | None = None
    age_B: Tensor | None = None
    timing: dict[str, float] = field(default_factory=dict)
    old_logp_BT: Tensor | None = None
    reward_parts: dict[str, Tensor] | None = None
    version_B: Tensor | None = None

    def __len__(self) -> int:
        return self.tokens_BT.shape[0]

    @property
    def completion_lengths_B(self) -> Tensor:
        return self.mask_BT.sum(-1)

    def row_lengths(self) -> tuple[list[int], list[int]]:
        """Each row's prompt and completion tokens (what `MicroBatching.split` packs by)."""
        width = self.prompt_width
        return self.attention_BT[:, :width].sum(-1).tolist(), self.attention_BT[:, width:].sum(-1).tolist()

    def to(self, device: torch.device | str) -> Rollout:
        """The same rollout with every tensor on `device`."""
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return dataclasses.replace(self, **moved)

    def state_dict(self) -> dict:
        """Its fields as a plain dict of tensors and Python values: checkpoints that hold rollouts
        (reused training data, the probes' continuations) load with `torch.load(weights_only=True)`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict) -> Rollout:
        return cls(**state)

    def with_rewards(self, reward_B: Tensor, parts: dict[str, Tensor] | None = None) -> Rollout:
        return dataclasses.replace(self, reward_B=reward_B.to(self.tokens_BT.device, torch.float32), reward_parts=parts)

    def select(self, index: Sequence[int]) -> Rollout:
        """The rows in `index`, trimmed to the widest remaining prompt and completion."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return _trim(
            dataclasses.replace(
                self,
                tokens_BT=self.tokens_BT[idx],
                attention_BT=self.attention_BT[idx],
                mask_BT=self.mask_BT[idx],
                logp_BT=self.logp_BT[idx],
                group_B=self.group_B[idx],
                truncated_B=self.truncated_B[idx],
                completions=[self.completions[i] for i in idx.tolist()],
                reward_B=None if self.reward_B is None else self.reward_B[idx],
                age_B=None if self.age_B is None else self.age_B[idx],
                timing={},  # the time spent producing them belongs to the whole batch
                old_logp_BT=None if self.old_logp_BT is None else self.old_logp_BT[idx],
                reward_parts=None if self.reward_parts is None else {k: v[idx] for k, v in self.reward_parts.items()},
                version_B=None if self.version_B is None else self.version_B[idx],
            )
        )


def _trim(rollout: Rollout) -> Rollout:
    """Drop prompt columns that are padding in every row and completion columns past every EOS."""
    width = rollout.prompt_width
    prompt_used = rollout.attention_BT[:, :width].any(0).nonzero()
    start = int(prompt_used[0]) if len(prompt_used) else width
    completion_used = rollout.attention_BT[:, width:].any(0).nonzero()
    stop = width + (int(completion_used[-1]) + 1 if len(completion_used) else 0)
    if start == 0 and stop == rollout.tokens_BT.shape[1]:
        return rollout
    cut = slice(start, stop)
    return dataclasses.replace(
        rollout,
        tokens_BT=rollout.tokens_BT[:, cut],
        attention_BT=rollout.attention_BT[:, cut],
        mask_BT=rollout.mask_BT[:, cut],
        logp_BT=rollout.logp_BT[:, cut],
        prompt_width=width - start,
        old_logp_BT=None if rollout.old_logp_BT is None else rollout.old_logp_BT[:, cut],
    )


def _pad_to(x_BT: Tensor, prompt_width: int, new_prompt_width: int, new_width: int, value) -> Tensor:
    """Re-pad a row block: more padding on the left of the prompt, on the right of the completion."""
    left = new_prompt_width - prompt_width
    right = new_width - left - x_BT.shape[1]
    return torch.nn.functional.pad(x_BT, (left, right), value=value)


def concat_rollouts(rollouts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts of possibly different widths into one; group ids are renumbered so that
    groups stay distinct."""
    if len(rollouts) == 1:
        return rollouts[0]
    prompt_width = max(r.prompt_width for r in rollouts)
    completion_width = max(r.tokens_BT.shape[1] - r.prompt_width for r in rollouts)
    width = prompt_width + completion_width

    def stack(name: str, value) -> Tensor:
        return torch.cat([_pad_to(getattr(r, name), r.prompt_width, prompt_width, width, value) for r in rollouts])

    groups, offset = [], 0
    for r in rollouts:
        dense_B, count = dense_groups(r.group_B)  # 0, 1, ... within r
        groups.append(dense_B + offset)
        offset += count
    has_rewards = all(r.reward_B is not None for r in rollouts)
    has_age = all(r.age_B is not None for r in rollouts)
    has_old = all(r.old_logp_BT is not None for r in rollouts)
    has_version = all(r.version_B is not None for r in rollouts)
    has_parts = all(r.reward_parts is not None and r.reward_parts.keys() == rollouts[0].reward_parts.keys() for r in rollouts)
    return Rollout(
        tokens_BT=stack("tokens_BT", pad_id),
        attention_BT=stack("attention_BT", 0),
        mask_BT=stack("mask_BT", False),
        logp_BT=stack("logp_BT", 0.0),
        group_B=torch.cat(groups),
        truncated_B=torch.cat([r.truncated_B for r in rollouts]),
        prompt_width=prompt_width,
        completions=[c for r in rollouts for c in r.completions],
        temperature=rollouts[0].temperature,
        reward_B=torch.cat([r.reward_B for r in rollouts]) if has_rewards else None,
        age_B=torch.cat([r.age_B for r in rollouts]) if has_age else None,
        timing={k: sum(r.timing.get(k, 0.0) for r in rollouts) for k in rollouts[0].timing},
        old_logp_BT=stack("old_logp_BT", 0.0) if has_old else None,
        reward_parts={k: torch.cat([r.reward_parts[k] for r in rollouts]) for k in rollouts[0].reward_parts} if has_parts else None,
        version_B=torch.cat([r.version_B for r in rollouts]) if has_version else None,
    )
