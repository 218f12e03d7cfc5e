"""GRPO: online RL with verifiable rewards (Shao et al. 2024, DeepSeekMath), as one preset of the
unified policy-gradient estimator.

Objective, per prompt q with G completions o_i scored r_i by the task's verifier:
    L = -mean_i mean_t min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i) + kl_coef * KL_k3,
    rho_it = pi(o_it | q, o_i<t) / pi_old(o_it | ...),  A_i = (r_i - mean_G r) / (std_G r + eps).

Where it departs from the paper, or chooses:
1. One optimizer step per rollout batch by default, so pi_old is the current policy and `old_logp`
   is the detached current log-probs: no second forward pass. Rows reused from an earlier step (a
   `rollouts: {every_n_steps: N}` above 1) divide by their stored sampler log-probs instead.
   `ppo_epochs` and `mini_batches` take several (`methods.epochs`; verl's ppo_epochs and
   ppo_mini_batch_size, TRL's num_iterations and steps_per_generation): the batch's advantages
   are computed once, its rows split in order into `mini_batches` parts, each an optimizer step
   (normalised by its own counts), over `ppo_epochs` passes; pi_old is then the policy's
   log-probs before the first step, one extra forward pass without gradients (`tokens/pi_old`),
   so that the clip and `clip_fraction` mean what they do in PPO. `max_steps` and every step
   cadence count optimizer steps and must be multiples of ppo_epochs x mini_batches (checked at
   start-up).
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

from torch import Tensor

from lit_posttrain.data.batches import Batch
from lit_posttrain.losses.policy_gradient import PolicyGradientLoss, grpo_preset
from lit_posttrain.methods.on_policy import OnPolicyModule
from lit_posttrain.rollout import Rollout


class GRPO(OnPolicyModule):
    """Group relative policy optimisation (see the module docstring).

    Args:
        loss: the policy-gradient loss; default: GRPO's preset (group-normalised advantage, PPO clip 0.2/0.2, sequence mean, no KL).
        skip_zero_advantage: skip the forward pass of rows with zero advantage when there is no KL term (same gradient, less compute).
    """

    min_group_size = 2

    @property
    def token_kinds(self) -> tuple[str, ...]:
        # The reference's forward, for the KL term.
        return (*super().token_kinds, "reference") if self.loss.kl_coef > 0 else super().token_kinds

    def __init__(self, *args, loss: PolicyGradientLoss | None = None, skip_zero_advantage: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # An aggregation normalised by the completion budget (ConstantLength) takes the sampler's.
        self.loss = (loss or grpo_preset()).for_budget(self.engine.max_new_tokens)
        self.skip_zero_advantage = skip_zero_advantage

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        rollout = self.rollouts_for(batch)
        # Computed once over the whole batch, also when its rows are split between optimizer steps.
        adv_B = self.loss.advantage(rollout.reward_B, rollout.group_B)

        def step_on(part: Rollout, index: list[int]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
            return self.policy_gradient_backward(part, self.loss, self.skip_zero_advantage, adv_B=adv_B[index])

        loss, metrics, trained_B = self.train_on(rollout, step_on)
        self.log_rollout_step(rollout, metrics, trained_B=trained_B)
        return loss
