"""What every method that trains on its own samples shares: its step's rollouts, from the
`RolloutSource` it owns (sampled now, reused or drawn ahead: `methods/sampling.py`), the forward
and backward passes over them in micro-batches and the optimizer step after them, the
policy-gradient loss, their statistics and the cost of sampling in the logs, held-out accuracy as
the validation metric."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.data.batches import Batch, Row
from lit_posttrain.groups import group_reduce
from lit_posttrain.logprobs import shared_prompt_logp, shared_prompt_tokens
from lit_posttrain.losses.importance import sampler_mismatch
from lit_posttrain.losses.policy_gradient import PolicyGradientLoss
from lit_posttrain.measurement import greedy_accuracy
from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.methods.epochs import RolloutEpochs
from lit_posttrain.methods.sampling import StepRollouts
from lit_posttrain.methods.stepping import MicroBatchedStep
from lit_posttrain.rollout import Rollout
from lit_posttrain.rollout.watch import SamplingWatch


class OnPolicyModule(StepRollouts, RolloutEpochs, MicroBatchedStep, PostTrainingModule):
    """Base of the on-policy methods. A method's `training_step` starts with
    `rollout = self.rollouts_for(batch)`, the batch's scored samples (group g answers
    `batch.rows[g]`; `StepRollouts`), trains on them with `self.train_on(rollout, step_on)`, where
    `step_on` runs the forward and backward passes of some of its rows a micro-batch at a time
    (`backward_in_micro_batches`, or `policy_gradient_backward` for a policy-gradient loss) and
    an optimizer step follows each call (one per batch, or ppo_epochs x mini_batches:
    `RolloutEpochs`), then calls `self.log_rollout_step(rollout, metrics)` and returns the loss.

    Args:
        group_size: completions sampled per prompt.
        truncation_warning: the share of a step's completions cut at max_new_tokens above which the run says so on the console, once (1.0: never).
    """

    # Methods whose advantages compare a prompt's completions need at least two of them.
    min_group_size: int = 1

    @property
    def token_kinds(self) -> tuple[str, ...]:
        # pi_old's forward pass, where a batch takes several optimizer steps.
        return ("prompts", "generated", *super().token_kinds, *(("pi_old",) if self.takes_pi_old_pass else ()))

    # `wait_s`: the step waiting for samples drawn ahead of training (`RolloutSource.max_staleness`),
    # whose own generate_s and score_s then ran beside the training.
    time_phases = ("generate_s", "score_s", "wait_s", *PostTrainingModule.time_phases)

    def __init__(
        self,
        *args,
        group_size: int = 8,
        truncation_warning: float = 0.25,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if group_size < self.min_group_size:
            raise ValueError(
                f"{type(self).__name__} group_size must be at least {self.min_group_size}"
                + (" (advantages compare completions of a prompt)" if self.min_group_size > 1 else "")
                + f", got {group_size}"
            )
        self.group_size = group_size
        self.sampling_watch = SamplingWatch(truncation_warning)

    def longest_completion(self, row: Row) -> tuple[int, str]:
        # A sample of up to max_new_tokens, or (a method that also trains on them) the demonstration.
        sampled = self.engine.max_new_tokens
        demonstration, bound = super().longest_completion(row)
        if self.needs_demonstrations and demonstration > sampled:
            return demonstration, bound
        return sampled, f"max_new_tokens {sampled}"

    # --- the loss -------------------------------------------------------------------------------

    def policy_gradient_backward(
        self,
        rollout: Rollout,
        loss: PolicyGradientLoss,
        skip_zero_advantage: bool = True,
        weight: float = 1.0,
        adv_B: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Forward and backward of `loss` (times `weight`) over a scored rollout batch, a
        micro-batch at a time: the loss (detached), its metrics, and which rows ran the passes.
        `adv_B`: the rows' advantages where they were computed over a larger batch (a mini-batch's
        rows; default: from this rollout's rewards and groups).

        With `skip_zero_advantage` and no KL term, rows whose advantage is zero (a group whose
        rewards are all equal) carry no gradient, so their passes are skipped; the loss is
        normalised by the whole batch's counts, so its value and gradient are the full pass's."""
        if adv_B is None:
            adv_B = loss.advantage(rollout.reward_B, rollout.group_B)
        trained_B = torch.ones_like(adv_B, dtype=torch.bool)
        if skip_zero_advantage and loss.kl_coef == 0:
            trained_B = adv_B != 0
            if not trained_B.any():
                # Keep one row so that every step (and every rank) runs a backward pass.
                trained_B[0] = True
        # Rows run with weight 0 (a process with none of its own joining the others' passes) are not counted.
        counts = self.step_counts(rollout.mask_BT if weight else rollout.mask_BT[:0])
        rows, adv_B = rollout.select(trained_B.nonzero().squeeze(-1).tolist()), adv_B[trained_B]

        def micro_batch_loss(index: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
            part = rows.select(index)
            logp_BT = self.rollout_logp(part)
            old_logp_BT, mismatch = self.old_logp(part, logp_BT)
            ref_logp_BT = None
            if loss.kl_coef > 0:
                ref_logp_BT = self.reference_logp(part.tokens_BT, part.attention_BT, part.temperature, part.prompt_width)
                self.count_tokens("reference", part.attention_BT.sum())
            value, metrics = loss(
                logp_BT, part.mask_BT, adv_B=adv_B[index], old_logp_BT=old_logp_BT, ref_logp_BT=ref_logp_BT,
                sampler_logp_BT=part.logp_BT, counts=counts,
            )  # fmt: skip
            return weight * value, metrics | mismatch

        value, metrics = self.backward_in_micro_batches(*rows.row_lengths(), micro_batch_loss)
        return value, metrics, trained_B

    def rollout_logp(self, rollout: Rollout, temperature: float | None = None, kind: str = "trained") -> Tensor:
        """Policy log-probs (with gradients) of a rollout's completion tokens (0 elsewhere), at its
        sampling temperature unless `temperature` is given; the tokens run are counted as `kind`.

        Each prompt is run once and its key/value cache shared by its group's completions, which
        gives the same log-probs and gradient as running every row in full at a fraction of the
        cost (prompts are usually most of the tokens). Gradient checkpointing disables the cache,
        so the plain full-row forward is used then.
        """
        tokens_BT, attention_BT = rollout.tokens_BT, rollout.attention_BT
        temperature = rollout.temperature if temperature is None else temperature
        if self.gradient_checkpointing:
            self.count_tokens(kind, attention_BT.sum())
            return self.policy_logp(tokens_BT, attention_BT, temperature, rollout.prompt_width) * rollout.mask_BT
        self.count_tokens(kind, shared_prompt_tokens(attention_BT, rollout.group_B, rollout.prompt_width))
        return shared_prompt_logp(self.policy, tokens_BT, attention_BT, rollout.group_B, rollout.prompt_width, temperature)

    @staticmethod
    def old_logp(rollout: Rollout, logp_BT: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """pi_old's log-probs for the loss, and how far the sampler was from the trainer.

        Rows reused from an earlier step take the sampler's stored log-probs; the others take the
        trainer's own before this batch's first optimizer step (`rollout.old_logp_BT`, where the
        batch takes several), else its current ones, detached (one optimizer step per batch makes
        pi_old the current policy).
        The gap between the sampler's and the trainer's log-probs on the fresh rows is returned as
        metrics (`sampler_abs_diff`, `sampler_kl`): with HFEngine in float32 it is ~0, with vLLM's
        kernels or a bf16 sampling copy it is what a sampler correction (`losses.importance`)
        corrects for.
        """
        reused_B = rollout.age_B > 0
        fresh_BT = logp_BT.detach() if rollout.old_logp_BT is None else rollout.old_logp_BT
        old_logp_BT = torch.where(reused_B[:, None], rollout.logp_BT, fresh_BT)
        return old_logp_BT, sampler_mismatch(old_logp_BT, rollout.logp_BT, rollout.mask_BT & ~reused_B[:, None])

    # --- logging ------------------------------------------------------------------------------

    def log_rollout_step(self, rollout: Rollout, metrics: dict[str, Tensor], trained_B: Tensor | None = None) -> None:
        """Log the rollouts' statistics with the step's `metrics` (its tokens and time are logged
        by the base module when the step ends)."""
        trained_B = torch.ones(len(rollout), dtype=torch.bool) if trained_B is None else trained_B.cpu()
        step = getattr(self, "_steps_before_batch", self.trainer.global_step)  # the batch's first optimizer step
        self.last_rollout = rollout  # for what shows the samples (callbacks.LogCompletions)
        lengths_B = rollout.completion_lengths_B.float()
        mask_BT = rollout.mask_BT.float()
        values = {
            "train/completion_length": lengths_B.mean(),
            "train/truncated": rollout.truncated_B.float().mean(),
            "train/terminated": 1 - rollout.truncated_B.float().mean(),  # ended with EOS
            # -log p of the sampled tokens under the sampler: an estimate of the sampling
            # distribution's entropy per token, taken without the full-vocabulary logits.
            "train/entropy": -(rollout.logp_BT.float() * mask_BT).sum() / mask_BT.sum().clamp(min=1),
            "train/rows_trained": trained_B.float().mean(),
            **{f"train/{k}": v for k, v in metrics.items()},
        }
        if rollout.version_B is not None:
            # Optimizer steps from the weights that drew the rows to those this batch starts from.
            values["train/staleness"] = (step - rollout.version_B.float()).mean()
        if rollout.reward_B is not None:
            values.update(reward_statistics(rollout))
            failures = self.sampler.scorer.failures
            values["train/verifier_errors"] = torch.tensor(float(failures.errors))
            values["train/verifier_timeouts"] = torch.tensor(float(failures.timeouts))
            self.log("reward", values["train/reward"], prog_bar=True, batch_size=len(rollout), logger=False)
        # sync_dist: every logged number is the mean over all processes, not rank 0's share; the
        # reduction runs on the trainer's device (NCCL reduces no CPU tensor).
        values = {k: torch.as_tensor(v, device=self.device) for k, v in values.items()}
        self.log_dict(values, batch_size=len(rollout), sync_dist=True)
        # The shortest and longest over every process, not a mean of each one's.
        self.log("train/completion_length_min", lengths_B.min(), batch_size=len(rollout), sync_dist=True, reduce_fx="min")
        self.log("train/completion_length_max", lengths_B.max(), batch_size=len(rollout), sync_dist=True, reduce_fx="max")
        if self.global_rank == 0:
            self.sampling_watch.update(step, rollout.truncated_B, rollout.reward_B, self.engine.max_new_tokens)

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
    parts = {f"train/rewards/{name}": score_B.float().mean() for name, score_B in (rollout.reward_parts or {}).items()}
    return {
        "train/reward": reward_B.mean(),
        "train/reward_std": reward_B.std() if len(reward_B) > 1 else torch.tensor(0.0),
        "train/zero_variance_groups": (max_G == min_G).float().mean(),
        **parts,
    }

