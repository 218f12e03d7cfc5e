"""Steps handed data of a chosen shape, for measuring a step's time and memory at real lengths
without sampling them first (1,024 tokens x 64 take the CPU engine an hour to sample).

- `SyntheticRollouts`: an on-policy method's rollout source that hands every step `prompts` x
  `group` completions of `length` random tokens after `prompt_tokens`-token prompts, each group's
  rewards half 0 and half 1 (no row has a zero advantage, so none is skipped).
- `SyntheticTask`: prompts and demonstrations of random characters (the tiny tokenizer of a
  `random:` shape makes each one token), `length` of them a demonstration, for SFT.
"""

from __future__ import annotations

import random

import torch

from lit_posttrain.data.task import Example, Task
from lit_posttrain.rewards import ExactMatch
from lit_posttrain.rollout import Rollout
from lit_posttrain.rollout.source import RolloutSource


class SyntheticRollouts(RolloutSource):
    def __init__(self, prompts: int, group: int, length: int, prompt_tokens: int, vocab: int, seed: int = 0) -> None:
        super().__init__()
        self.prompts, self.group, self.length, self.prompt_tokens, self.vocab = prompts, group, length, prompt_tokens, vocab
        self.generator = torch.Generator().manual_seed(seed)

    def rollouts(self, rows, step, sample, pad_id, any_rank) -> Rollout:
        rows_n = self.prompts * self.group
        prompt_PW = torch.randint(10, self.vocab, (self.prompts, self.prompt_tokens), generator=self.generator)
        completion_RC = torch.randint(10, self.vocab, (rows_n, self.length), generator=self.generator)
        tokens_RT = torch.cat([prompt_PW.repeat_interleave(self.group, 0), completion_RC], 1)
        mask_RT = torch.zeros_like(tokens_RT, dtype=torch.bool)
        mask_RT[:, self.prompt_tokens :] = True
        return Rollout(
            tokens_BT=tokens_RT, attention_BT=torch.ones_like(tokens_RT), mask_BT=mask_RT,
            logp_BT=torch.zeros(tokens_RT.shape), group_B=torch.arange(self.prompts).repeat_interleave(self.group),
            truncated_B=torch.ones(rows_n, dtype=torch.bool), prompt_width=self.prompt_tokens,
            completions=[""] * rows_n, reward_B=(torch.arange(rows_n) % 2).float(),
            age_B=torch.zeros(rows_n, dtype=torch.long),
        )  # fmt: skip


class SyntheticTask(Task):
    name = "synthetic"

    def __init__(self, rows: int, length: int, prompt_chars: int = 64, seed: int = 0) -> None:
        self.verifier = ExactMatch()
        rng = random.Random(seed)
        letters = "abcdefghijklmnopqrstuvwxyz0123456789"

        def text(n: int) -> str:
            return "".join(rng.choice(letters) for _ in range(n))

        self.examples = [
            Example([{"role": "user", "content": text(prompt_chars)}], answer="x", demonstration=text(length), source=f"synthetic row {i}")
            for i in range(rows)
        ]

    def train_examples(self):
        return self.examples

    def eval_examples(self):
        return self.examples[:1]
