"""OTR: one-token rollout (arXiv 2509.26313; no public code). SFT data turned into an on-policy,
token-level policy gradient.

Objective, at every demonstration position t with ground-truth token x_t: sample K candidate
tokens a_j from the exploration distribution softmax(logits_t / kappa), reward R_j = 1 if
a_j = x_t else `wrong_reward`, and minimise
    L_t = -(1/K) * sum_j R_j * log pi(a_j | context_t)          (rewards held constant),
averaged over every demonstration token of the optimizer step (SFT's exact token mean).

Choices where the paper is silent, each a parameter:
1. wrong_reward = -0.1 by default (the paper reports "slightly negative" works best, not the value).
2. The ground-truth token is not forced into the samples by default (`force_target`).
3. Log-probs are at temperature 1; only the exploration distribution uses kappa.
4. Computed through counts: because R takes two values the loss needs one gather of K log-probs
   per position, no loop over K or positions and no V-wide count vector.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.data.batches import Batch
from lit_posttrain.logprobs import first_masked, forward_logits
from lit_posttrain.losses.otr import otr_loss, otr_samples
from lit_posttrain.methods.sft import SFT


class OTR(SFT):
    """One-token rollout on the task's demonstrations (see the module docstring).

    Args:
        k: candidate tokens sampled per position (K).
        kappa: temperature of the exploration distribution the candidates are sampled from.
        wrong_reward: reward of a candidate that is not the ground-truth token (the ground truth gets 1).
        force_target: put the ground-truth token among the samples where none of the K drew it.
    """

    def __init__(self, *args, k: int = 256, kappa: float = 1.3, wrong_reward: float = -0.1, force_target: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if k < 1 or kappa <= 0:
            raise ValueError(f"OTR needs k >= 1 and kappa > 0, got k={k}, kappa={kappa}")
        self.k, self.kappa, self.wrong_reward, self.force_target = k, kappa, wrong_reward, force_target

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        tokens_BT, attention_BT, mask_BT = self.pack_for_training(batch.rows)
        first = first_masked(mask_BT)
        # Logits only where a demonstration token is predicted: positions first - 1 .. T - 2.
        logits_BSV = forward_logits(self.policy, tokens_BT, attention_BT, keep_last=tokens_BT.shape[1] - first + 1)
        predicts_BS = mask_BT[:, first:]
        logits_NV = logits_BSV[:, :-1][predicts_BS]
        target_N = tokens_BT[:, first:][predicts_BS]
        # Seeded by the run, the step and the micro-batch, not the global RNG: a resumed run draws
        # the same candidates as the uninterrupted one.
        generator = torch.Generator(logits_NV.device).manual_seed(self.run_seed("batch", batch_idx))
        samples_NK = otr_samples(logits_NV, target_N, self.k, self.kappa, self.force_target, generator)
        logp_NV = torch.log_softmax(logits_NV.float(), -1)
        loss_N = otr_loss(logp_NV, samples_NK, target_N, self.wrong_reward)
        loss = loss_N.sum() / self.token_normaliser(batch.window_tokens)
        with torch.no_grad():
            nll = -logp_NV.gather(-1, target_N[:, None]).mean()
            hit_rate = (samples_NK == target_N[:, None]).float().mean()
        self.log_dict({"train/otr_loss": loss_N.mean().detach(), "train/nll": nll, "train/sample_hit_rate": hit_rate}, batch_size=len(batch), sync_dist=True)
        return loss
