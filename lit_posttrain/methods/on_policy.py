"""What every method that trains on its own samples shares: its step's rollouts, asked for in
`training_step` and sampled or reused as the `RolloutRefresh` callback decides, their statistics
and the cost of sampling in the logs, held-out accuracy as the validation metric."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.callbacks.rollout_refresh import RolloutRefresh
from lit_posttrain.data.datamodule import Batch, Row
from lit_posttrain.evaluation import greedy_accuracy
from lit_posttrain.groups import group_reduce
from lit_posttrain.logprobs import shared_prompt_logp, shared_prompt_tokens
from lit_posttrain.losses.policy_gradient import sampler_mismatch
from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.rollout import Rollout


class OnPolicyModule(PostTrainingModule):
    """Base of the on-policy methods. A method's `training_step` starts with
    `rollout = self.rollouts_for(batch)`, the batch's scored samples (group g answers
    `batch.rows[g]`), and ends with `self.log_rollout_step(rollout, metrics)`.

    Args:
        group_size: completions sampled per prompt.
    """

    @property
    def token_kinds(self) -> tuple[str, ...]:
        return ("prompts", "generated", *super().token_kinds)

    time_phases = ("generate_s", "score_s", *PostTrainingModule.time_phases)

    def __init__(self, *args, group_size: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        self.group_size = group_size

    def default_callbacks(self) -> list:
        # Rollouts reach the module through RolloutRefresh: strictly on-policy unless the run's
        # configuration chose another cadence.
        return [*super().default_callbacks(), RolloutRefresh()]

    def rollouts_for(self, batch: Batch) -> Rollout:
        """This step's rollouts for `batch`, group g answering `batch.rows[g]`: sampled now with the
        current weights, or reused, as the run's `RolloutRefresh` decides (its cadence and cache).
        The sampling's tokens and time are charged to this step."""
        refresh = next(cb for cb in self.trainer.callbacks if isinstance(cb, RolloutRefresh))  # see default_callbacks
        rollout = refresh.rollouts_for(self.trainer, self, batch)
        self.step_cost.mark("start")  # the loss forward starts here; sampling is timed as its own phases
        return rollout

    def sample_rollouts(self, rows: list[Row]) -> Rollout:
        """The rollouts RolloutRefresh asks for: `group_size` scored samples per prompt. Methods
        that sample differently (another temperature, no scoring) override this."""
        return self.sample(rows, n=self.group_size)

    def count_sampling(self, rows: list[Row], rollout: Rollout) -> None:
        """Charge a sampling call to this step (RolloutRefresh calls it after each; the offline
        cadence's sampling of the whole training set, before the first step, goes to step 0)."""
        self.count_tokens("prompts", sum(len(row.prompt_ids) for row in rows))  # each prefilled once for its group
        self.count_tokens("generated", rollout.mask_BT.sum())
        self.add_time("generate_s", rollout.timing.get("generate_s", 0.0))
        self.add_time("score_s", rollout.timing.get("score_s", 0.0))

    def rollout_logp(self, rollout: Rollout, rows: Tensor | None = None, temperature: float | None = None) -> Tensor:
        """Policy log-probs (with gradients) of a rollout's tokens, at its sampling temperature
        unless `temperature` is given.

        Each prompt is run once and its key/value cache shared by its group's completions, which
        gives the same log-probs and gradient as running every row in full at a fraction of the
        cost (prompts are usually most of the tokens). `rows` selects rows to compute; the others
        get zeros with no gradient. Gradient checkpointing disables the cache, so the plain
        full-row forward is used then.
        """
        rows = torch.ones(len(rollout), dtype=torch.bool, device=rollout.tokens_BT.device) if rows is None else rows
        logp_BT = torch.zeros(rollout.tokens_BT.shape, device=rollout.tokens_BT.device)
        index_R = rows.nonzero().squeeze(-1)
        tokens_RT, attention_RT = rollout.tokens_BT[index_R], rollout.attention_BT[index_R]
        temperature = rollout.temperature if temperature is None else temperature
        if self.gradient_checkpointing:
            logp_RT = self.policy_logp(tokens_RT, attention_RT, temperature, rollout.prompt_width) * rollout.mask_BT[index_R]
            self.count_tokens("trained", attention_RT.sum())
        else:
            logp_RT = shared_prompt_logp(
                self.policy, tokens_RT, attention_RT, rollout.group_B[index_R], rollout.prompt_width, temperature
            )
            self.count_tokens("trained", shared_prompt_tokens(attention_RT, rollout.group_B[index_R], rollout.prompt_width))
        return logp_BT.index_put((index_R,), logp_RT)

    @staticmethod
    def old_logp(rollout: Rollout, logp_BT: Tensor, computed_B: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """pi_old's log-probs for the loss, and how far the sampler was from the trainer.

        Rows reused from an earlier step take the sampler's stored log-probs; the others take the
        trainer's own, detached (one optimizer step per batch makes pi_old the current policy; rows
        whose forward was skipped, `computed_B` False, then get ratio 1). The gap between the
        sampler's and the trainer's log-probs on the fresh computed rows is returned as metrics
        (`sampler_abs_diff`, `sampler_kl`): with HFEngine in float32 it is ~0, with vLLM's kernels
        or a bf16 sampling copy it is what `TruncatedIS` corrects for.
        """
        computed_B = torch.ones_like(rollout.age_B, dtype=torch.bool) if computed_B is None else computed_B
        reused_B = (rollout.age_B > 0) & computed_B
        old_logp_BT = torch.where(reused_B[:, None], rollout.logp_BT, logp_BT.detach())
        fresh_B = (rollout.age_B == 0) & computed_B
        return old_logp_BT, sampler_mismatch(old_logp_BT, rollout.logp_BT, rollout.mask_BT & fresh_B[:, None])

    # --- logging ------------------------------------------------------------------------------

    def log_rollout_step(self, rollout: Rollout, metrics: dict[str, Tensor], trained_B: Tensor | None = None) -> None:
        """Log the rollouts' statistics with the step's `metrics` (its tokens and time are logged
        by the base module when the step ends)."""
        trained_B = torch.ones(len(rollout), dtype=torch.bool) if trained_B is None else trained_B.cpu()
        values = {
            "train/completion_length": rollout.completion_lengths_B.float().mean(),
            "train/truncated": rollout.truncated_B.float().mean(),
            "train/rows_trained": trained_B.float().mean(),
            **{f"train/{k}": v for k, v in metrics.items()},
        }
        if rollout.reward_B is not None:
            values.update(reward_statistics(rollout))
            values["train/verifier_errors"] = torch.tensor(float(self.scorer.failures.errors))
            values["train/verifier_timeouts"] = torch.tensor(float(self.scorer.failures.timeouts))
            self.log("reward", values["train/reward"], prog_bar=True, batch_size=len(rollout), logger=False)
        # sync_dist: every logged number is the mean over all processes, not rank 0's share.
        self.log_dict(values, batch_size=len(rollout), sync_dist=True)

    # --- held-out accuracy --------------------------------------------------------------------

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        result = greedy_accuracy(self, batch.rows)
        self.log("val/accuracy", result["accuracy"], prog_bar=True, batch_size=len(batch), sync_dist=True)
        self.log("val/completion_length", result["completion_length"], batch_size=len(batch), sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        result = greedy_accuracy(self, batch.rows)
        self.log("test/accuracy", result["accuracy"], batch_size=len(batch), sync_dist=True)


def reward_statistics(rollout: Rollout) -> dict[str, Tensor]:
    reward_B, group_B = rollout.reward_B.cpu(), rollout.group_B.cpu()
    max_G, min_G = group_reduce(reward_B, group_B, "amax"), group_reduce(reward_B, group_B, "amin")
    return {
        "train/reward": reward_B.mean(),
        "train/reward_std": reward_B.std() if len(reward_B) > 1 else torch.tensor(0.0),
        "train/zero_variance_groups": (max_G == min_G).float().mean(),
    }

