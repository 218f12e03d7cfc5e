"""HPT: hybrid post-training (the "unified view" paper; code public, built on verl). A per-prompt
switch between SFT and RL, decided by how well the model solves the prompt now.

For each prompt q: sample n rollouts, verify them, P = the fraction solved.
    P <= gamma  (too hard for the model now): SFT on q's demonstration, its rollouts dropped;
    P >  gamma: the RL (GRPO) loss on its rollouts.
    L = (n_sft * L_sft + n_rl * L_rl) / (n_sft + n_rl),
L_sft the token-mean NLL over the SFT prompts' demonstrations, L_rl the policy-gradient loss over
the RL prompts' rollouts (GRPO's loss, `OnPolicyModule.policy_gradient_backward`; sequence mean
by default), n_* the number of prompts routed each way over every process: every prompt weighs the
same whichever way it goes (`losses.hybrid.prompt_weighted`). A side with no prompt contributes 0.
Each side runs a micro-batch at a time, normalised by its whole step's counts. With `ppo_epochs`
and `mini_batches` (`methods.epochs`) each optimizer step takes a share of the batch's prompts,
whole, weighed by its own counts; the RL side divides by the policy before the first (pi_old).

Departures from the authors' code (both are traps METHODS.md names):
1. Their RL part ran without clipping and with mean-centred advantages, and mixed a token-mean SFT
   loss with a sum-normalised RL loss. Here the RL part is GRPO's preset (clipped, group-normalised;
   any part swappable) and the two are combined with the explicit per-prompt weighting above.
2. "Solved" means a reward of at least `solved_threshold` (1.0: fully correct).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.data.batches import Batch, Row
from lit_posttrain.groups import dense_groups, group_reduce
from lit_posttrain.losses import token_mean_nll
from lit_posttrain.losses.hybrid import prompt_weights
from lit_posttrain.losses.policy_gradient import PolicyGradientLoss, grpo_preset
from lit_posttrain.methods.on_policy import OnPolicyModule
from lit_posttrain.rollout import Rollout


def route_to_sft(reward_B: Tensor, group_B: Tensor, gamma: float, solved_threshold: float = 1.0) -> Tensor:
    """Per group (prompt, in group order: the batch's): True where its solved fraction <= gamma."""
    return group_reduce((reward_B >= solved_threshold).float(), group_B, "mean") <= gamma


class HPT(OnPolicyModule):
    """Hybrid post-training: SFT or RL per prompt (see the module docstring).

    Args:
        gamma: a prompt whose solved fraction is at most gamma trains on its demonstration (0 for Qwen models, 2/8 for Llama in the paper).
        solved_threshold: the reward at or above which a rollout counts as solved.
        loss: the RL side's policy-gradient loss; default: GRPO's preset (group-normalised advantage, PPO clip 0.2/0.2, sequence mean, no KL).
        skip_zero_advantage: skip the forward pass of RL rows with zero advantage when there is no KL term (same gradient, less compute).
    """

    needs_demonstrations = True
    min_group_size = 2
    mini_batch_whole_prompts = True  # a prompt's rows go to one side together

    @property
    def token_kinds(self) -> tuple[str, ...]:
        # The reference's forward, for the RL side's KL term.
        return (*super().token_kinds, "reference") if self.loss.kl_coef > 0 else super().token_kinds

    def __init__(
        self,
        *args,
        gamma: float = 0.0,
        solved_threshold: float = 1.0,
        loss: PolicyGradientLoss | None = None,
        skip_zero_advantage: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"HPT gamma is a solved fraction and must be in [0, 1], got {gamma}")
        self.gamma, self.solved_threshold = gamma, solved_threshold
        self.loss = (loss or grpo_preset()).for_budget(self.engine.max_new_tokens)
        self.skip_zero_advantage = skip_zero_advantage

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        rollout = self.rollouts_for(batch)
        sft_G = route_to_sft(rollout.reward_B, rollout.group_B, self.gamma, self.solved_threshold)
        group_of_B, _ = dense_groups(rollout.group_B)

        def step_on(part: Rollout, index: list[int]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
            # Group g of the rollout answers batch.rows[g] (OnPolicyModule.rollouts_for); a part holds whole groups.
            groups = torch.unique(group_of_B[index])
            return self.hybrid_backward(part, [batch.rows[g] for g in groups.tolist()], sft_G[groups])

        # Only the RL side's rows divide by pi_old: the SFT prompts' rollouts are dropped.
        loss, metrics, trained_B = self.train_on(rollout, step_on, pi_old_B=~sft_G[group_of_B])
        metrics["sft_fraction"] = sft_G.float().mean()  # the batch's, however it was split
        self.log_rollout_step(rollout, metrics, trained_B=trained_B)
        return loss

    def hybrid_backward(self, rollout: Rollout, rows: list[Row], sft_G: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Forward and backward of the hybrid loss over `rollout`, whose group g answers `rows[g]`
        and goes to SFT where `sft_G[g]`: the loss, its metrics and which rollout rows ran passes."""
        n_sft, n_rl = int(sft_G.sum()), int((~sft_G).sum())
        # Every prompt of the step, on every process, weighs the same.
        w_sft, w_rl = prompt_weights(*(int(n) for n in self.summed_over_processes([n_sft, n_rl])))
        loss = torch.zeros((), device=self.device)
        metrics = {"sft_fraction": sft_G.float().mean()}
        trained_B = torch.zeros(len(rollout), dtype=torch.bool, device=rollout.tokens_BT.device)
        # With several processes every rank computes both sides, so that each logs the same metrics
        # (a collective per metric) and, under FSDP, runs the same forward passes: a rank with no
        # prompt on one side computes it on its first prompt with weight 0.
        both = self.trainer.world_size > 1
        first_G = torch.arange(len(sft_G), device=sft_G.device) == 0
        if n_sft or both:
            sft_rows = [rows[g] for g in (sft_G if n_sft else first_G).nonzero().squeeze(-1).tolist()]

            def sft_loss(index: list[int], num_tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
                logp_BT, mask_BT = self.demonstration_logp([sft_rows[i] for i in index])
                value, sft_metrics = token_mean_nll(logp_BT, mask_BT, num_tokens=num_tokens)
                return (w_sft if n_sft else 0.0) * value, {"sft_nll": sft_metrics["nll"]}

            value, sft_metrics = self.demonstration_backward(sft_rows, sft_loss, counted=n_sft > 0)
            sft_metrics.pop("tokens")
            loss += value
            metrics.update(self._pooled(sft_metrics, n_sft))
        if n_rl or both:
            group_of_B, _ = dense_groups(rollout.group_B)
            rl_rows = (~sft_G if n_rl else first_G)[group_of_B].nonzero().squeeze(-1)
            value, rl_metrics, trained_rl = self.policy_gradient_backward(
                rollout.select(rl_rows.tolist()), self.loss, self.skip_zero_advantage, weight=w_rl if n_rl else 0.0
            )
            loss += value
            if n_rl:
                trained_B[rl_rows] = trained_rl
            metrics.update(self._pooled(rl_metrics, n_rl))
        return loss, metrics, trained_B

    def _pooled(self, metrics: dict[str, Tensor], prompts: int) -> dict[str, Tensor]:
        """One side's metrics averaged over its prompts on every rank (a rank's own value weighs as
        many prompts as it routed that way); empty when no rank routed any."""
        keys = sorted(metrics)
        sums = torch.stack([metrics[k].detach().float().to(self.device) for k in keys]) * prompts
        sums = sums.nan_to_num() if prompts == 0 else sums  # a weight-0 side is left out, even if NaN
        sums = self.trainer.strategy.reduce(torch.cat([sums, sums.new_tensor([prompts])]), reduce_op="sum")
        if sums[-1] == 0:
            return {}
        return {k: sums[i] / sums[-1] for i, k in enumerate(keys)}
