"""GRPO: online RL with verifiable rewards (Shao et al. 2024, DeepSeekMath), as one preset of the
unified policy-gradient estimator.

Objective, per prompt q with G completions o_i scored r_i by the task's verifier:
    L = -mean_i mean_t min(rho_it A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_k3,
    rho_it = pi(o_it | q, o_i<t) / pi_old(o_it | ...),  A_i = (r_i - mean_G r) / (std_G r + eps).

Where it departs from the paper, or chooses:
1. One optimizer step per rollout batch by default, so pi_old is the current policy and `old_logp`
   is the detached current log-probs: no second forward pass. Rows reused from an earlier step (a
   RolloutRefresh cadence above 1) divide by their stored sampler log-probs instead.
2. KL to the reference is off by default (beta = 0, today's common choice); when on it is the k3
   estimator and costs one reference forward pass (free in memory with LoRA).
3. Rows whose advantage is zero (groups whose rewards are all equal) carry no gradient when beta
   is 0, so their forward pass is skipped; the loss is normalised as if they were there.
4. Log-probs are taken at the sampling temperature, so that the ratio compares the distribution
   that sampled the tokens with the one being trained.
5. Advantage scaling, clipping and aggregation are injected parts (`loss:`), not flags.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from lit_posttrain.callbacks.rollout_refresh import RolloutRefresh
from lit_posttrain.data.datamodule import Batch
from lit_posttrain.losses.policy_gradient import PolicyGradientLoss, grpo_preset
from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.rollout import Rollout


class GRPO(PostTrainingModule):
    """Group relative policy optimisation (see the module docstring).

    Args:
        group_size: completions sampled per prompt (G).
        loss: the policy-gradient loss; default: GRPO's preset (group-normalised advantage, PPO clip 0.2/0.2, sequence mean, no KL).
        skip_zero_advantage: skip the forward pass of rows with zero advantage when there is no KL term (same gradient, less compute).
    """

    def __init__(
        self,
        *args,
        group_size: int = 8,
        loss: PolicyGradientLoss | None = None,
        skip_zero_advantage: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if group_size < 2:
            raise ValueError(f"GRPO group_size must be at least 2 (advantages compare completions of a prompt), got {group_size}")
        self.group_size = group_size
        self.loss = loss or grpo_preset()
        self.skip_zero_advantage = skip_zero_advantage
        self.rollout: Rollout | None = None  # set by RolloutRefresh before every step

    def configure_callbacks(self):
        # Rollouts reach the module through RolloutRefresh; add the strictly on-policy default only
        # when the run's configuration has not chosen a cadence.
        if any(isinstance(cb, RolloutRefresh) for cb in self.trainer.callbacks):
            return []
        return [RolloutRefresh()]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        rollout = self.rollout
        start = time.perf_counter()
        adv_B = self.loss.advantage(rollout.reward_B, rollout.group_B)
        active_B = torch.ones_like(adv_B, dtype=torch.bool)
        if self.skip_zero_advantage and self.loss.beta == 0:
            active_B = adv_B != 0
            if not active_B.any():
                # Keep one row so that every step (and every rank) runs a backward pass.
                active_B[0] = True
        logp_BT = self.rollout_logp(rollout, active_B)
        fresh_BT = (rollout.age_B == 0)[:, None] | ~active_B[:, None]
        old_logp_BT = torch.where(fresh_BT, logp_BT.detach(), rollout.logp_BT)
        ref_logp_BT = None
        if self.loss.beta > 0:
            ref_logp_BT = self.reference_logp(rollout.tokens_BT, rollout.attention_BT, rollout.temperature)
        loss, metrics = self.loss(logp_BT, rollout.mask_BT, adv_B=adv_B, old_logp_BT=old_logp_BT, ref_logp_BT=ref_logp_BT)
        self._log_step(rollout, metrics, active_B, time.perf_counter() - start)
        self._backward_start = time.perf_counter()
        return loss

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        # Backward and optimizer step happen between training_step's return and this hook.
        self.log("time/backward_step_s", time.perf_counter() - self._backward_start, batch_size=len(batch))

    def _log_step(self, rollout: Rollout, metrics: dict, active_B: Tensor, loss_s: float) -> None:
        _, group_B = torch.unique(rollout.group_B, return_inverse=True)
        groups = int(group_B.max()) + 1
        reward_max_G = torch.full((groups,), -float("inf")).scatter_reduce(0, group_B, rollout.reward_B, "amax")
        reward_min_G = torch.full((groups,), float("inf")).scatter_reduce(0, group_B, rollout.reward_B, "amin")
        values = {
            "train/reward": rollout.reward_B.mean(),
            "train/reward_std": rollout.reward_B.std() if len(rollout) > 1 else torch.tensor(0.0),
            "train/zero_variance_groups": (reward_max_G == reward_min_G).float().mean(),
            "train/completion_length": rollout.completion_lengths_B.float().mean(),
            "train/truncated": rollout.truncated_B.float().mean(),
            "train/rows_trained": active_B.float().mean(),
            # Token counts for throughput: generated tokens, and tokens the loss forward ran on
            # (each active group's prompt once, plus its active completions).
            "tokens/prompts": self._prompt_tokens(rollout, torch.ones_like(active_B)),
            "tokens/generated": rollout.mask_BT.sum().float(),
            "tokens/trained": self._prompt_tokens(rollout, active_B) + rollout.mask_BT[active_B].sum(),
            "time/generate_s": torch.tensor(rollout.timing.get("generate_s", 0.0)),
            "time/score_s": torch.tensor(rollout.timing.get("score_s", 0.0)),
            "time/loss_forward_s": torch.tensor(loss_s),
            **{f"train/{k}": v for k, v in metrics.items()},
        }
        self.log_dict(values, batch_size=len(rollout), reduce_fx="mean")
        self.log("train/reward_mean", values["train/reward"], prog_bar=True, batch_size=len(rollout), logger=False)

    @staticmethod
    def _prompt_tokens(rollout: Rollout, rows_B: Tensor) -> Tensor:
        """Prompt tokens of the groups that have a row in `rows_B`, each prompt counted once."""
        first_of_group = torch.searchsorted(rollout.group_B, rollout.group_B[rows_B].unique())
        return rollout.attention_BT[first_of_group, : rollout.prompt_width].sum().float()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        result = self.evaluate(batch.rows)
        self.log("val/accuracy", result["accuracy"], prog_bar=True, batch_size=len(batch))
        self.log("val/completion_length", result["completion_length"], batch_size=len(batch))

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        result = self.evaluate(batch.rows)
        self.log("test/accuracy", result["accuracy"], batch_size=len(batch))
