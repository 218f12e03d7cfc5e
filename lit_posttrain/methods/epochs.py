"""Several optimizer steps on one rollout batch, as PPO takes them (verl's `ppo_epochs` and
`ppo_mini_batch_size`, TRL's `num_iterations` and `steps_per_generation`): the batch's rows are
split in order into `mini_batches` parts, each an optimizer step normalised by its own counts, over
`ppo_epochs` passes. A loss that divides by pi_old then divides by the policy's log-probs before the
first of those steps (one extra forward pass without gradients, `tokens/pi_old`), so that the clip
and `clip_fraction` mean what they do in PPO. With one pass of one part, a batch is one step, as
sampling fresh for every step is: pi_old is then the current policy and costs nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from lit_posttrain.groups import dense_groups
from lit_posttrain.rollout import Rollout

# One optimizer step's passes over the batch's rows `index` (`part` holds those rows): the loss,
# its metrics and which of the rows ran the passes.
StepOn = Callable[[Rollout, list[int]], tuple[Tensor, dict[str, Tensor], Tensor]]


class RolloutEpochs:
    """An `OnPolicyModule` mixin: its `training_step` trains on the batch's rollout through
    `train_on(rollout, step_on)`, which takes one optimizer step or ppo_epochs x mini_batches.

    Args:
        ppo_epochs: passes over each rollout batch (verl's ppo_epochs, TRL's num_iterations).
        mini_batches: optimizer steps per pass, each on an equal share of the batch's rows (whole prompts for HPT; verl's ppo_mini_batch_size as a count, TRL's steps_per_generation).
    """

    # A method whose step treats each prompt's rows together (HPT routes a prompt to SFT or RL)
    # splits the batch between whole prompts.
    mini_batch_whole_prompts: bool = False

    def __init__(self, *args, ppo_epochs: int = 1, mini_batches: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if ppo_epochs < 1 or mini_batches < 1:
            raise ValueError(f"{type(self).__name__} ppo_epochs and mini_batches must be at least 1, got {ppo_epochs} and {mini_batches}")
        self.ppo_epochs, self.mini_batches = ppo_epochs, mini_batches
        self.optimizer_steps_per_batch = ppo_epochs * mini_batches

    @property
    def uses_pi_old(self) -> bool:
        """Whether the loss divides by pi_old; one that does not (SePT's NLL, the full-vocabulary
        JSD) takes several steps on a batch without pi_old's forward pass."""
        return True

    @property
    def takes_pi_old_pass(self) -> bool:
        return self.optimizer_steps_per_batch > 1 and self.uses_pi_old

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.optimizer_steps_per_batch > 1:
            self.check_step_counts()

    def check_step_counts(self) -> None:
        """Refuse at start-up what several optimizer steps per batch would break mid-run: a batch
        with fewer rows (prompts) than `mini_batches`, and a step count the steps would jump over.
        Each batch advances the step by k = ppo_epochs x mini_batches: `max_steps` must be a
        multiple of k (or the last batch overshoots it), and a callback's cadence a multiple or a
        divisor of k (one of 1 or 2 with k = 4 runs after every batch; 6 would run only every 12
        steps)."""
        k, trainer, name = self.optimizer_steps_per_batch, self.trainer, type(self).__name__
        wrong = [f"trainer.max_steps = {trainer.max_steps}"] if trainer.max_steps > 0 and trainer.max_steps % k else []
        for callback in trainer.callbacks:
            n = getattr(callback, "every_n_steps", None) or getattr(callback, "_every_n_train_steps", None)
            if isinstance(n, int) and n > 0 and n % k and k % n:
                wrong.append(f"{type(callback).__name__} every {n} steps")
        if wrong:
            raise ValueError(
                f"{name} with ppo_epochs {self.ppo_epochs} x mini_batches {self.mini_batches} takes {k} optimizer steps "
                f"per rollout batch; these step counts would be jumped over: {', '.join(wrong)}. Make each a "
                f"multiple of {k} (a callback's may also divide {k})"
            )
        data = getattr(trainer, "datamodule", None)
        if data is not None:
            last = len(data.train_rows) % (data.batch_size * trainer.world_size) or data.batch_size * trainer.world_size
            prompts = max(1, min(data.batch_size, last // trainer.world_size))
            units = prompts if self.mini_batch_whole_prompts else prompts * self.group_size
            if units < self.mini_batches:
                what = "prompts" if self.mini_batch_whole_prompts else "rows"
                raise ValueError(
                    f"{name} mini_batches {self.mini_batches} is more than the {units} {what} of the smallest batch "
                    f"(data.batch_size {data.batch_size}"
                    + ("" if self.mini_batch_whole_prompts else f" x group_size {self.group_size}")
                    + ", or the epoch's last batch)"
                )

    def train_on(self, rollout: Rollout, step_on: StepOn, pi_old_B: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Train on a rollout batch: `step_on(part, index)` runs the passes of rows `index`, and an
        optimizer step follows each call. One call on the whole batch, or each of `mini_batches`
        parts over `ppo_epochs` passes, with pi_old stored in the rollout first (for rows
        `pi_old_B`, default all: a method that drops some rows' rollouts spares their pass).
        Returns the steps' mean loss, each metric's mean over the steps that logged it, and which
        rows ran passes in any step."""
        if self.optimizer_steps_per_batch == 1:
            loss, metrics, trained_B = step_on(rollout, list(range(len(rollout))))
            self.step_optimizer()
            return loss, metrics, trained_B
        if self.uses_pi_old:
            rollout = self.with_old_logp(rollout, pi_old_B)
        parts = self.mini_batch_parts(rollout)
        losses, steps = [], []
        trained_B = torch.zeros(len(rollout), dtype=torch.bool)
        for epoch in range(self.ppo_epochs):
            for m, index in enumerate(parts):
                loss, metrics, trained_M = step_on(rollout.select(index), index)
                last = epoch == self.ppo_epochs - 1 and m == len(parts) - 1
                self.step_optimizer(push=last)  # the engine needs only the batch's last weights
                losses.append(loss)
                steps.append(metrics)
                trained_B[index] |= trained_M.cpu()
        keys = dict.fromkeys(key for metrics in steps for key in metrics)  # first-seen order
        mean = {k: torch.stack([m[k].detach().float().cpu() for m in steps if k in m]).mean() for k in keys}
        return torch.stack(losses).mean(), mean, trained_B

    def mini_batch_parts(self, rollout: Rollout) -> list[list[int]]:
        """The batch's rows split in order into `mini_batches` parts as equal as they can be: of
        rows, or of whole prompts (`mini_batch_whole_prompts`)."""
        if not self.mini_batch_whole_prompts:
            return [part.tolist() for part in torch.tensor_split(torch.arange(len(rollout)), self.mini_batches)]
        group_of_B, groups = dense_groups(rollout.group_B.cpu())
        return [
            torch.isin(group_of_B, groups_M).nonzero().squeeze(-1).tolist()
            for groups_M in torch.tensor_split(torch.arange(groups), self.mini_batches)
        ]

    @torch.no_grad()
    def with_old_logp(self, rollout: Rollout, rows_B: Tensor | None = None) -> Rollout:
        """`rollout` with pi_old (`old_logp_BT`): the policy's log-probs of its completions now,
        before the first of several optimizer steps on it, taken a micro-batch at a time, for rows
        `rows_B` (default all; the others' are left 0)."""
        old_BT = torch.zeros_like(rollout.logp_BT)
        width = rollout.prompt_width
        rows = list(range(len(rollout))) if rows_B is None else rows_B.cpu().nonzero().squeeze(-1).tolist()
        # With none chosen the first row still runs: every process must run the same passes.
        rows = rows or [0]
        chosen = rollout.select(rows)
        for index, _ in self.micro_batches(*chosen.row_lengths()):  # a repeated one writes the same again
            part = chosen.select(index)
            logp_BC = self.rollout_logp(part, kind="pi_old")[:, part.prompt_width :]
            old_BT[[rows[i] for i in index], width : width + logp_BC.shape[1]] = logp_BC
        return dataclasses.replace(rollout, old_logp_BT=old_BT)
