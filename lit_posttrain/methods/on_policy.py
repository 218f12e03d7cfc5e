"""What every method that trains on its own samples shares: its step's rollouts, from the
`RolloutSource` it owns (sampled now or reused), the policy-gradient loss over them, their
statistics and the cost of sampling in the logs, held-out accuracy as the validation metric."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.data.batches import Batch, Row
from lit_posttrain.groups import group_reduce
from lit_posttrain.logprobs import shared_prompt_logp, shared_prompt_tokens
from lit_posttrain.losses.aggregation import Counts
from lit_posttrain.losses.importance import sampler_mismatch
from lit_posttrain.losses.policy_gradient import PolicyGradientLoss
from lit_posttrain.measurement import greedy_accuracy
from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.rollout import Rollout
from lit_posttrain.rollout.source import RolloutSource


class OnPolicyModule(PostTrainingModule):
    """Base of the on-policy methods. A method's `training_step` starts with
    `rollout = self.rollouts_for(batch)`, the batch's scored samples (group g answers
    `batch.rows[g]`), and ends with `self.log_rollout_step(rollout, metrics)`.

    Args:
        group_size: completions sampled per prompt.
        rollouts: when rollouts are sampled again and when reused (default: sampled every step, strictly on-policy); checkpointed with the module.
    """

    # Methods whose advantages compare a prompt's completions need at least two of them.
    min_group_size: int = 1

    @property
    def token_kinds(self) -> tuple[str, ...]:
        return ("prompts", "generated", *super().token_kinds)

    time_phases = ("generate_s", "score_s", *PostTrainingModule.time_phases)

    def __init__(self, *args, group_size: int = 8, rollouts: RolloutSource | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if group_size < self.min_group_size:
            raise ValueError(
                f"{type(self).__name__} group_size must be at least {self.min_group_size}"
                + (" (advantages compare completions of a prompt)" if self.min_group_size > 1 else "")
                + f", got {group_size}"
            )
        self.group_size = group_size
        self.rollouts = rollouts or RolloutSource()

    # --- the step's rollouts ------------------------------------------------------------------

    def rollouts_for(self, batch: Batch) -> Rollout:
        """This step's rollouts for `batch`, group g answering `batch.rows[g]`: sampled now with the
        current weights, or reused, as `self.rollouts` decides. The sampling's tokens and time are
        charged to this step."""
        rollout = self.rollouts.rollouts(
            batch.rows, self.trainer.global_step, self._sample_counted, self.tokenizer.pad_token_id, self._any_rank
        )
        self.step_cost.mark("start")  # the loss forward starts here; sampling is timed as its own phases
        return rollout

    def on_train_start(self) -> None:
        if self.rollouts.offline:  # charged to step 0
            self.rollouts.sample_all(self.trainer.datamodule.train_rows, self.trainer.global_step, self._sample_counted)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rollouts"] = self.rollouts.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints from before the source moved into the module kept it as a callback's state.
        legacy = [v for k, v in checkpoint.get("callbacks", {}).items() if k.startswith("RolloutRefresh")]
        state = checkpoint.get("rollouts", legacy[0] if legacy else None)
        if state is not None:
            self.rollouts.load_state_dict(state)

    def sample_rollouts(self, rows: list[Row]) -> Rollout:
        """`group_size` scored samples per prompt. Methods that sample differently (another
        temperature, no scoring) override this."""
        return self.sample(rows, n=self.group_size)

    def _sample_counted(self, rows: list[Row]) -> Rollout:
        rollout = self.sample_rollouts(rows)
        self.count_tokens("prompts", sum(len(row.prompt_ids) for row in rows))  # each prefilled once for its group
        self.count_tokens("generated", rollout.mask_BT.sum())
        self.add_time("generate_s", rollout.timing.get("generate_s", 0.0))
        self.add_time("score_s", rollout.timing.get("score_s", 0.0))
        return rollout

    def _any_rank(self, flag: bool) -> bool:
        """`flag` on any process, where the processes must sample together (a sharded policy)."""
        return self.trainer.strategy.reduce_boolean_decision(flag, all=False) if self.sharded else flag

    # --- the loss -----------------------------------------------------------------------------

    def policy_gradient_loss(
        self, rollout: Rollout, loss: PolicyGradientLoss, skip_zero_advantage: bool = True
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """`loss` over a scored rollout batch, its metrics, and which rows ran the forward pass.

        With `skip_zero_advantage` and no KL term, rows whose advantage is zero (a group whose
        rewards are all equal) carry no gradient, so their forward pass is skipped; the loss is
        normalised by the whole batch's counts, so its value and gradient are the full pass's."""
        adv_B = loss.advantage(rollout.reward_B, rollout.group_B)
        trained_B = torch.ones_like(adv_B, dtype=torch.bool)
        if skip_zero_advantage and loss.kl_coef == 0:
            trained_B = adv_B != 0
            if not trained_B.any():
                # Keep one row so that every step (and every rank) runs a backward pass.
                trained_B[0] = True
        counts = Counts.of(rollout.mask_BT)
        rows = rollout.select(trained_B.nonzero().squeeze(-1).tolist())
        logp_BT = self.rollout_logp(rows)
        old_logp_BT, mismatch = self.old_logp(rows, logp_BT)
        ref_logp_BT = None
        if loss.kl_coef > 0:
            ref_logp_BT = self.reference_logp(rows.tokens_BT, rows.attention_BT, rows.temperature, rows.prompt_width)
            self.count_tokens("reference", rows.attention_BT.sum())
        value, metrics = loss(
            logp_BT, rows.mask_BT, adv_B=adv_B[trained_B], old_logp_BT=old_logp_BT, ref_logp_BT=ref_logp_BT,
            sampler_logp_BT=rows.logp_BT, counts=counts,
        )  # fmt: skip
        return value, metrics | mismatch, trained_B

    def rollout_logp(self, rollout: Rollout, temperature: float | None = None) -> Tensor:
        """Policy log-probs (with gradients) of a rollout's completion tokens (0 elsewhere), at its
        sampling temperature unless `temperature` is given.

        Each prompt is run once and its key/value cache shared by its group's completions, which
        gives the same log-probs and gradient as running every row in full at a fraction of the
        cost (prompts are usually most of the tokens). Gradient checkpointing disables the cache,
        so the plain full-row forward is used then.
        """
        tokens_BT, attention_BT = rollout.tokens_BT, rollout.attention_BT
        temperature = rollout.temperature if temperature is None else temperature
        if self.gradient_checkpointing:
            self.count_tokens("trained", attention_BT.sum())
            return self.policy_logp(tokens_BT, attention_BT, temperature, rollout.prompt_width) * rollout.mask_BT
        self.count_tokens("trained", shared_prompt_tokens(attention_BT, rollout.group_B, rollout.prompt_width))
        return shared_prompt_logp(self.policy, tokens_BT, attention_BT, rollout.group_B, rollout.prompt_width, temperature)

    @staticmethod
    def old_logp(rollout: Rollout, logp_BT: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """pi_old's log-probs for the loss, and how far the sampler was from the trainer.

        Rows reused from an earlier step take the sampler's stored log-probs; the others take the
        trainer's own, detached (one optimizer step per batch makes pi_old the current policy).
        The gap between the sampler's and the trainer's log-probs on the fresh rows is returned as
        metrics (`sampler_abs_diff`, `sampler_kl`): with HFEngine in float32 it is ~0, with vLLM's
        kernels or a bf16 sampling copy it is what a sampler correction (`losses.importance`)
        corrects for.
        """
        reused_B = rollout.age_B > 0
        old_logp_BT = torch.where(reused_B[:, None], rollout.logp_BT, logp_BT.detach())
        return old_logp_BT, sampler_mismatch(old_logp_BT, rollout.logp_BT, rollout.mask_BT & ~reused_B[:, None])

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
            failures = self.sampler.scorer.failures
            values["train/verifier_errors"] = torch.tensor(float(failures.errors))
            values["train/verifier_timeouts"] = torch.tensor(float(failures.timeouts))
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

