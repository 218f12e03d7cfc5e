"""GRPO: online RL with verifiable rewards (Shao et al. 2024, DeepSeekMath), as one preset of the
unified policy-gradient estimator.

Objective, per prompt q with G completions o_i scored r_i by the task's verifier:
    L = -mean_i mean_t min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i) + kl_coef * KL_k3,
    rho_it = pi(o_it | q, o_i<t) / pi_old(o_it | ...),  A_i = (r_i - mean_G r) / (std_G r + eps).

Where it departs from the paper, or chooses:
1. One optimizer step per rollout batch by default, so pi_old is the current policy and `old_logp`
   is the detached current log-probs: no second forward pass. Rows reused from an earlier step (a
   `rollouts: {every_n_steps: N}` above 1) divide by their stored sampler log-probs instead.
   `ppo_epochs` and `mini_batches` take several (verl's ppo_epochs and ppo_mini_batch_size, TRL's
   num_iterations and steps_per_generation): the batch's advantages are computed once, its rows
   split in order into `mini_batches` parts, each an optimizer step (normalised by its own
   counts), over `ppo_epochs` passes; pi_old is then the policy's log-probs before the first step,
   one extra forward pass without gradients (`tokens/pi_old`), so that the clip and
   `clip_fraction` mean what they do in PPO. `max_steps` and every step cadence count optimizer
   steps and must be multiples of ppo_epochs x mini_batches (checked at start-up).
2. KL to the reference is off by default (kl_coef = 0, today's common choice); when on it is the k3
   estimator (clamped at 10, as verl does; `kl_estimator` chooses another) and costs one reference
   forward pass (free in memory with LoRA).
3. Rows whose advantage is zero (groups whose rewards are all equal: exactly zero, not left to
   float32's rounding) carry no gradient when kl_coef is 0, so their forward pass is skipped; the
   loss is normalised by the whole batch's counts, as if they were there.
4. Log-probs are taken at the sampling temperature, so that the ratio compares the distribution
   that sampled the tokens with the one being trained.
5. Advantage scaling, clipping and aggregation are injected parts (`loss:`), not flags.
6. The passes run a micro-batch of rows at a time (`micro_batching:`), the loss of each divided by
   the whole step's rows or tokens over every process, so the gradient is the single pass's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.data.batches import Batch
from lit_posttrain.losses.policy_gradient import PolicyGradientLoss, grpo_preset
from lit_posttrain.methods.on_policy import OnPolicyModule


class GRPO(OnPolicyModule):
    """Group relative policy optimisation (see the module docstring).

    Args:
        loss: the policy-gradient loss; default: GRPO's preset (group-normalised advantage, PPO clip 0.2/0.2, sequence mean, no KL).
        skip_zero_advantage: skip the forward pass of rows with zero advantage when there is no KL term (same gradient, less compute).
        ppo_epochs: passes over each rollout batch (verl's ppo_epochs, TRL's num_iterations).
        mini_batches: optimizer steps per pass, each on an equal share of the batch's rows (verl's ppo_mini_batch_size as a count, TRL's steps_per_generation).
    """

    min_group_size = 2

    @property
    def token_kinds(self) -> tuple[str, ...]:
        # The reference's forward, for the KL term; pi_old's, when a batch takes several steps.
        kinds = (*super().token_kinds, "reference") if self.loss.kl_coef > 0 else super().token_kinds
        return (*kinds, "pi_old") if self.optimizer_steps_per_batch > 1 else kinds

    def __init__(
        self,
        *args,
        loss: PolicyGradientLoss | None = None,
        skip_zero_advantage: bool = True,
        ppo_epochs: int = 1,
        mini_batches: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if ppo_epochs < 1 or mini_batches < 1:
            raise ValueError(f"GRPO ppo_epochs and mini_batches must be at least 1, got {ppo_epochs} and {mini_batches}")
        # An aggregation normalised by the completion budget (ConstantLength) takes the sampler's.
        self.loss = (loss or grpo_preset()).for_budget(self.engine.max_new_tokens)
        self.skip_zero_advantage = skip_zero_advantage
        self.ppo_epochs, self.mini_batches = ppo_epochs, mini_batches
        self.optimizer_steps_per_batch = ppo_epochs * mini_batches

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.optimizer_steps_per_batch > 1:
            self.check_step_counts()

    def check_step_counts(self) -> None:
        """Refuse at start-up what several optimizer steps per batch would break mid-run: a batch
        with fewer rows than `mini_batches`, and a step count the steps would jump over. Each batch
        advances the step by k = ppo_epochs x mini_batches: `max_steps` must be a multiple of k (or
        the last batch overshoots it), and a callback's cadence a multiple or a divisor of k (one
        of 1 or 2 with k = 4 runs after every batch; 6 would run only every 12 steps)."""
        k, trainer = self.optimizer_steps_per_batch, self.trainer
        wrong = [f"trainer.max_steps = {trainer.max_steps}"] if trainer.max_steps > 0 and trainer.max_steps % k else []
        for callback in trainer.callbacks:
            n = getattr(callback, "every_n_steps", None) or getattr(callback, "_every_n_train_steps", None)
            if isinstance(n, int) and n > 0 and n % k and k % n:
                wrong.append(f"{type(callback).__name__} every {n} steps")
        if wrong:
            raise ValueError(
                f"GRPO with ppo_epochs {self.ppo_epochs} x mini_batches {self.mini_batches} takes {k} optimizer steps "
                f"per rollout batch; these step counts would be jumped over: {', '.join(wrong)}. Make each a "
                f"multiple of {k} (a callback's may also divide {k})"
            )
        data = getattr(trainer, "datamodule", None)
        if data is not None:
            last = len(data.train_rows) % (data.batch_size * trainer.world_size) or data.batch_size * trainer.world_size
            rows = max(1, min(data.batch_size, last // trainer.world_size)) * self.group_size
            if rows < self.mini_batches:
                raise ValueError(
                    f"GRPO mini_batches {self.mini_batches} is more than the {rows} rows of the smallest batch "
                    f"(data.batch_size {data.batch_size} x group_size {self.group_size}, or the epoch's last batch)"
                )

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        rollout = self.rollouts_for(batch)
        if self.optimizer_steps_per_batch == 1:
            loss, metrics, trained_B = self.policy_gradient_backward(rollout, self.loss, self.skip_zero_advantage)
            self.step_optimizer()
            self.log_rollout_step(rollout, metrics, trained_B=trained_B)
            return loss
        rollout = self.with_old_logp(rollout)
        adv_B = self.loss.advantage(rollout.reward_B, rollout.group_B)
        parts = torch.tensor_split(torch.arange(len(rollout)), self.mini_batches)
        steps = []  # (loss, metrics) of each optimizer step
        trained_B = torch.zeros(len(rollout), dtype=torch.bool)
        for epoch in range(self.ppo_epochs):
            for m, index_M in enumerate(parts):
                loss, metrics, trained_M = self.policy_gradient_backward(
                    rollout.select(index_M.tolist()), self.loss, self.skip_zero_advantage, adv_B=adv_B[index_M]
                )
                last = epoch == self.ppo_epochs - 1 and m == len(parts) - 1
                self.step_optimizer(push=last)  # the engine needs only the batch's last weights
                steps.append((loss, metrics))
                trained_B[index_M] |= trained_M.cpu()
        # Logged once per rollout batch: each metric's mean over its optimizer steps.
        metrics = {k: torch.stack([m[k] for _, m in steps]).mean() for k in steps[0][1]}
        self.log_rollout_step(rollout, metrics, trained_B=trained_B)
        return torch.stack([loss for loss, _ in steps]).mean()
