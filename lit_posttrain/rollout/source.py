"""Where an on-policy step's rollouts come from: sampled now with the current weights, reused
from a cache, or drawn ahead of training by a worker thread, as the one cadence every on-policy
method shares decides. The module owns its source (a constructor argument, `rollouts:`) and
checkpoints it with itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from lit_posttrain.data.batches import Row
from lit_posttrain.rollout.ahead import SamplesAhead
from lit_posttrain.rollout.types import Rollout, concat_rollouts

Sampler = Callable[[list[Row]], Rollout]
"""Samples (and scores) the rollouts of some prompts with the current weights, group g answering
row g; the module's, which also charges the sampling's tokens and time to the step."""


class RolloutSource:
    """Sampled now, or reused: a prompt's rollouts are sampled again once they are `every_n_steps`
    optimizer steps old, and reused until then (the loss then divides by the stored sampler
    log-probs). `every_n_steps: 1` is strictly on-policy, the default; `null` samples every
    training prompt once, with the starting weights, before the first step: the offline ablation.

    Or drawn ahead: with `max_staleness: k` (k >= 1), while the trainer trains on one batch, the
    engine draws the samples of the next k batches in a background thread with the weights of that
    moment (`rollout.ahead`), so sampling overlaps training; a batch trains on samples drawn k
    batches earlier (k x ppo_epochs x mini_batches optimizer steps, `train/staleness`). The loss
    treats them as fresh samples of a sampler that lags the trainer: pi_old is the trainer's own
    log-probs and a sampler correction (`TruncatedIS` and the like) weighs each token by
    pi_old / pi_sampler; `train/sampler_kl` measures the gap. `max_staleness: 0` samples each batch
    when it is trained on, as without it.

    Args:
        every_n_steps: optimizer steps a prompt's rollouts stay in use; null: sampled once, before training.
        batch_size: prompts per generation call when sampling the whole training set (every_n_steps null).
        max_staleness: rollout batches drawn ahead of training, overlapping sampling with training (0: none, on-policy).
    """

    def __init__(self, every_n_steps: int | None = 1, batch_size: int = 32, max_staleness: int = 0) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"rollouts every_n_steps must be >= 1 or null (once), got {every_n_steps}")
        if batch_size < 1:
            raise ValueError(f"rollouts batch_size must be at least 1, got {batch_size}")
        if max_staleness < 0:
            raise ValueError(f"rollouts max_staleness must be >= 0, got {max_staleness}")
        if max_staleness and every_n_steps != 1:
            raise ValueError(
                f"rollouts max_staleness {max_staleness} draws every batch's samples ahead of training; it cannot "
                f"also reuse them (every_n_steps {every_n_steps}): set every_n_steps: 1 or max_staleness: 0"
            )
        self.every_n_steps, self.batch_size, self.max_staleness = every_n_steps, batch_size, max_staleness
        self._cache: dict[tuple[int, ...], tuple[Rollout, int]] = {}
        self.ahead = SamplesAhead()

    @property
    def offline(self) -> bool:
        return self.every_n_steps is None

    def sample_all(self, rows: list[Row], step: int, sample: Sampler) -> None:
        """The offline cadence's one sampling of every training prompt, before the first step. A
        resumed run keeps what it restored: those rollouts came from the starting weights."""
        if self._cache:
            return
        for start in range(0, len(rows), self.batch_size):
            self._store(rows[start : start + self.batch_size], sample, step)

    def rollouts(self, rows: list[Row], step: int, sample: Sampler, pad_id: int, any_rank: Callable[[bool], bool]) -> Rollout:
        """The rollouts of `rows` at optimizer step `step`, group g answering `rows[g]`: the cached
        ones where still fresh enough, the others sampled now. `any_rank(flag)` is the flag on any
        process (the process's own where they need not sample together)."""
        if self.every_n_steps == 1:
            self._cache.clear()  # nothing is reused: keep no memory of it
        stale = [row for row in rows if self._stale(row, step)]
        # Under FSDP every rank must sample when any does (prompts age differently on each rank).
        anywhere = any_rank(bool(stale))
        if stale:
            self._store(stale, sample, step)
        elif anywhere:
            sample(rows[:1])  # thrown away: it only joins the others' forward passes (its cost is counted)
        parts = []
        for row in rows:
            part, sampled_at = self._cache[tuple(row.prompt_ids)]
            parts.append(dataclasses.replace(part, age_B=torch.full((len(part),), step - sampled_at, dtype=torch.long)))
        return concat_rollouts(parts, pad_id)

    def _stale(self, row: Row, step: int) -> bool:
        cached = self._cache.get(tuple(row.prompt_ids))
        return cached is None or (self.every_n_steps is not None and step - cached[1] >= self.every_n_steps)

    def _store(self, rows: list[Row], sample: Sampler, step: int) -> None:
        rollout = sample(rows)
        for g, row in enumerate(rows):
            self._cache[tuple(row.prompt_ids)] = (rollout.select((rollout.group_B == g).nonzero().squeeze(-1).tolist()), step)

    def state_dict(self) -> dict:
        # Reused rollouts are training data: a resumed run must reuse the same ones.
        return {
            "every_n_steps": self.every_n_steps,
            "cache": [(list(key), rollout.state_dict(), sampled_at) for key, (rollout, sampled_at) in self._cache.items()],
            "ahead": self.ahead.state_dict(),  # drawn for batches not trained on yet
        }

    def load_state_dict(self, state: dict) -> None:
        self._cache = {tuple(key): (Rollout.from_state_dict(fields), sampled_at) for key, fields, sampled_at in state["cache"]}
        self.ahead.load_state_dict(state.get("ahead", []))
