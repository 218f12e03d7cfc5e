"""On-policy distillation (OPD): the student samples, a frozen teacher scores the same tokens.

Objective, two estimators (the `estimator:` part):
- `SampledReverseKL` (the default): per-token advantage A_t = -(log pi(o_t) - log pi_T(o_t)), a
  one-sample estimate of -KL(pi || pi_T), optionally summed over future tokens with a discount,
  trained with the policy-gradient loss (denominator pi_old, no clip by default, token mean):
      grad L = -E_{o ~ pi}[ sum_t A_t grad log pi(o_t) ].
- `FullVocabJSD`: the generalized Jensen-Shannon divergence between the two full next-token
  distributions at every sampled position (GKD): beta = 1 reverse KL, 0 forward KL, in between JSD.
No environment reward is needed; held-out accuracy is still evaluated by the task's verifier.

Departures and choices:
1. Teacher and student must share the tokenizer; a mismatch stops the run at start-up.
2. Both distributions are taken at the sampling temperature (1.0 by default).
3. One completion per prompt by default (`group_size: 1`): the teacher provides a per-token
   baseline, so no group is needed.
4. One optimizer step per rollout batch by default; `ppo_epochs` and `mini_batches` take several
   (`methods.epochs`), the sampled estimator then dividing by the policy before the first
   (pi_old; the full-vocabulary JSD has no ratio and needs no such pass).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.data.batches import Batch
from lit_posttrain.head import divergence_in_chunks, logit_width
from lit_posttrain.logprobs import completion_states, shared_prompt_logp, shared_prompt_tokens
from lit_posttrain.losses.advantages import Constant
from lit_posttrain.losses.aggregation import TokenMean
from lit_posttrain.losses.distillation import generalized_jsd, jsd_loss, sampled_reverse_kl_loss
from lit_posttrain.losses.policy_gradient import NoMask, Old, PolicyGradientLoss
from lit_posttrain.methods.on_policy import OnPolicyModule
from lit_posttrain.rollout import Rollout


class DistillationEstimator:
    """Base of OPD's estimators: the settings of one of `losses.distillation`'s loss functions.
    `full_vocabulary` says what OPD feeds it: the student's and the teacher's log-probs of the
    sampled tokens (`logp_BT, teacher_logp_BT`, with the rollout's mask, pi_old, sampler
    log-probs and the step's `counts`), or its `divergence` of their full distributions at each
    completion position (`divergence_N` and the step's token count; OPD makes the logits a chunk of
    positions at a time). Either is one micro-batch's part of the step, divided by the whole step's
    counts."""

    full_vocabulary: bool = False

    def for_budget(self, max_new_tokens: int) -> DistillationEstimator:
        """This estimator for completions of at most `max_new_tokens` (see PolicyGradientLoss)."""
        return self


class SampledReverseKL(DistillationEstimator):
    """Per-token reverse-KL advantages with the policy-gradient loss.

    Args:
        discount: weight of future tokens' advantages in each token's (0: each token alone).
        loss: the policy-gradient loss the advantages go through (default: denominator pi_old, no clip, token mean).
    """

    def __init__(self, discount: float = 0.0, loss: PolicyGradientLoss | None = None) -> None:
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"SampledReverseKL discount must be in [0, 1], got {discount}")
        self.discount = discount
        self.loss = loss or PolicyGradientLoss(Old(), Constant(), NoMask(), TokenMean())

    def __call__(self, logp_BT: Tensor, teacher_logp_BT: Tensor, mask_BT: Tensor, **pg_kwargs) -> tuple[Tensor, dict[str, Tensor]]:
        return sampled_reverse_kl_loss(logp_BT, teacher_logp_BT, mask_BT, self.discount, self.loss, **pg_kwargs)

    def for_budget(self, max_new_tokens: int) -> DistillationEstimator:
        return SampledReverseKL(self.discount, self.loss.for_budget(max_new_tokens))


class FullVocabJSD(DistillationEstimator):
    """The generalized JSD over the full vocabulary at each sampled position, token mean.

    Args:
        beta: 1.0 reverse KL(student || teacher), 0.0 forward KL(teacher || student), in between the mixture JSD.
    """

    full_vocabulary = True

    def __init__(self, beta: float = 1.0) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"FullVocabJSD beta must be in [0, 1], got {beta}")
        self.beta = beta

    def divergence(self, student_logits_NV: Tensor, teacher_logits_NV: Tensor) -> Tensor:
        return generalized_jsd(student_logits_NV, teacher_logits_NV, self.beta)

    def __call__(self, divergence_N: Tensor, num_tokens: float | Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return jsd_loss(divergence_N, num_tokens)


class OPD(OnPolicyModule):
    """On-policy distillation from a frozen teacher (see the module docstring).

    Args:
        estimator: how the teacher's scores become a loss: SampledReverseKL (default) or FullVocabJSD.
    """

    uses_teacher = True

    def __init__(self, *args, estimator: DistillationEstimator | None = None, group_size: int = 1, **kwargs) -> None:
        super().__init__(*args, group_size=group_size, **kwargs)
        if self.teacher_folder is None:
            raise ValueError("OPD needs a teacher: set `teacher:` to a model source that shares the policy's tokenizer")
        self.estimator = (estimator or SampledReverseKL()).for_budget(self.engine.max_new_tokens)

    @property
    def uses_pi_old(self) -> bool:
        return not self.estimator.full_vocabulary

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        rollout = self.rollouts_for(batch)
        loss, metrics, _ = self.train_on(rollout, self.distillation_backward)
        self.log_rollout_step(rollout, metrics)
        return loss

    def distillation_backward(self, rollout: Rollout, index: list[int]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Forward and backward of the estimator's loss over `rollout` (the batch's rows `index`),
        a micro-batch at a time, normalised by its rows' counts over every process."""
        counts = self.step_counts(rollout.mask_BT)

        def micro_batch_loss(index: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
            part = rollout.select(index)
            if self.estimator.full_vocabulary:
                return self.estimator(self.completion_divergence(part, self.estimator.divergence), counts.tokens)
            logp_BT = self.rollout_logp(part)
            old_logp_BT, mismatch = self.old_logp(part, logp_BT)
            loss, metrics = self.estimator(
                logp_BT, self.teacher_rollout_logp(part), part.mask_BT,
                old_logp_BT=old_logp_BT, sampler_logp_BT=part.logp_BT, counts=counts,
            )  # fmt: skip
            return loss, metrics | mismatch

        loss, metrics = self.backward_in_micro_batches(*rollout.row_lengths(), micro_batch_loss)
        return loss, metrics, torch.ones(len(rollout), dtype=torch.bool)

    @torch.no_grad()
    def teacher_rollout_logp(self, rollout: Rollout) -> Tensor:
        """The teacher's log-probs of a rollout's completion tokens at its sampling temperature (0
        elsewhere), each prompt run once for its whole group, as the policy's are."""
        self.count_tokens("teacher", shared_prompt_tokens(rollout.attention_BT, rollout.group_B, rollout.prompt_width))
        return shared_prompt_logp(
            self.teacher, rollout.tokens_BT, rollout.attention_BT, rollout.group_B, rollout.prompt_width, rollout.temperature
        )

    def completion_divergence(self, rollout: Rollout, divergence) -> Tensor:
        """`divergence(student_logits_NV, teacher_logits_NV)` at every completion position, at the
        sampling temperature, over the vocabulary the two share; with the student's gradient."""
        student_NX, student_head = completion_states(self.policy, rollout)
        with torch.no_grad():
            teacher_NX, teacher_head = completion_states(self.teacher, rollout)
        self.count_tokens("trained", rollout.attention_BT.sum())
        self.count_tokens("teacher", rollout.attention_BT.sum())
        # Teachers may pad their vocabulary past the tokenizer's; compare the real vocabulary only.
        vocab = min(logit_width(student_NX, student_head), logit_width(teacher_NX, teacher_head), len(self.tokenizer))
        return divergence_in_chunks(student_NX, student_head, teacher_NX, teacher_head, divergence, rollout.temperature, vocab)
