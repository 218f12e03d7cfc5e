"""OTR: one-token rollout (arXiv 2509.26313; no public code). SFT data turned into an on-policy,
token-level policy gradient.

Objective, at every demonstration position t with ground-truth token x_t: sample K candidate
tokens a_j from the exploration distribution softmax(logits_t / kappa), reward R_j = 1 if
a_j = x_t else `wrong_reward`, and minimise
    L_t = -(1/K) * sum_j R_j * log pi(a_j | context_t)          (rewards held constant),
averaged over every demonstration token of the optimizer step (SFT's exact token mean, a
micro-batch of rows at a time).

Choices where the paper is silent, each a parameter:
1. wrong_reward = -0.1 by default (the paper reports "slightly negative" works best, not the value).
2. The ground-truth token is not forced into the samples by default (`force_target`).
3. Log-probs are at temperature 1; only the exploration distribution uses kappa.
4. Computed through counts: because R takes two values the loss needs one gather of K log-probs
   per position, no loop over K or positions and no V-wide count vector; and a chunk of positions
   at a time (`head.map_logits_in_chunks`), so no demonstration's full logits are held at once.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from lit_posttrain.data.batches import Batch, Row
from lit_posttrain.head import map_logits_in_chunks
from lit_posttrain.logprobs import masked_states
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
        loss, metrics = self.demonstration_backward(batch.rows, partial(self.demonstration_loss, batch.rows))
        self.step_optimizer()
        metrics.pop("tokens")  # SFT's own metric
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=len(batch), sync_dist=True)
        return loss

    def demonstration_loss(self, rows: list[Row], index: list[int], num_tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The summed loss of rows `index` of the step's `rows` over `num_tokens`, and its metrics."""
        tokens_BT, attention_BT, mask_BT = self.pack_for_training([rows[i] for i in index])
        # What the head reads where a demonstration token is predicted, in row order; the logits
        # are made a chunk of positions at a time (`map_logits_in_chunks`), never all at once.
        states_NX, head, target_N = masked_states(self.policy, tokens_BT, attention_BT, mask_BT)
        positions_B = mask_BT.sum(-1).tolist()

        def position_loss(logits_CV: Tensor, samples_CK: Tensor, target_C: Tensor) -> Tensor:
            return otr_loss(torch.log_softmax(logits_CV, -1), samples_CK, target_C, self.wrong_reward)

        # Drawn first, without gradient: a chunk made again in the backward must not draw again.
        # Each row's from a generator seeded by the run, the step, the process and the row's place
        # in the step, not the global RNG: the same candidates after a resume, and for any split
        # of the step into micro-batches.
        with torch.no_grad():
            samples = []
            for i, states_nX, target_n in zip(index, states_NX.split(positions_B), target_N.split(positions_B), strict=True):
                draw = self.candidate_draw(self.run_seed("otr", self.global_rank, i))
                samples.append(map_logits_in_chunks(states_nX, head, draw, target_n))
            samples_NK = torch.cat(samples)
        loss_N = map_logits_in_chunks(states_NX, head, position_loss, samples_NK, target_N)
        with torch.no_grad():
            nll = -map_logits_in_chunks(states_NX, head, target_logp, target_N).mean()
            hit_rate = (samples_NK == target_N[:, None]).float().mean()
        metrics = {"otr_loss": loss_N.mean().detach(), "nll": nll, "sample_hit_rate": hit_rate}
        return loss_N.sum() / num_tokens, metrics

    def candidate_draw(self, seed: int) -> Callable[[Tensor, Tensor], Tensor]:
        """Draws `k` candidates per position for a chunk of logits, from a generator seeded once."""
        generator = torch.Generator(self.device).manual_seed(seed)

        def draw(logits_CV: Tensor, target_C: Tensor) -> Tensor:
            return otr_samples(logits_CV, target_C, self.k, self.kappa, self.force_target, generator)

        return draw


def target_logp(logits_CV: Tensor, target_C: Tensor) -> Tensor:
    return torch.log_softmax(logits_CV, -1).gather(-1, target_C[:, None]).squeeze(-1)
