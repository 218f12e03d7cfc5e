"""One-token rollout (OTR, arXiv 2509.26313): SFT data turned into a token-level policy gradient."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def otr_samples(
    logits_NV: Tensor, target_N: Tensor, k: int, kappa: float, force_target: bool = False, generator=None
) -> Tensor:
    """`k` candidate tokens per position from the exploration distribution `softmax(logits / kappa)`,
    drawn in one call (no loop over k or positions). With `force_target`, a position whose samples
    miss the ground-truth token gets it in place of its last sample."""
    probs_NV = torch.softmax(logits_NV.float() / kappa, -1)
    samples_NK = torch.multinomial(probs_NV, k, replacement=True, generator=generator)
    if force_target:
        missing_N = ~(samples_NK == target_N[:, None]).any(-1)
        samples_NK[missing_N, -1] = target_N[missing_N]
    return samples_NK


def otr_loss(logp_NV: Tensor, samples_NK: Tensor, target_N: Tensor, wrong_reward: float) -> Tensor:
    """Per-position loss `-(1/K) sum_v c_v R_v log pi(v)`, `c_v` the count of v among the K samples,
    `R_v = 1` for the ground-truth token and `wrong_reward` otherwise (rewards are constants).

    Because R takes two values, the sum is `(1 - wrong_reward) * c_target * log pi(target) + wrong_reward * sum_j
    log pi(a_j)`: one gather of K log-probs per position instead of a V-wide count vector."""
    k = samples_NK.shape[1]
    hits_N = (samples_NK == target_N[:, None]).sum(-1).to(logp_NV.dtype)
    logp_target_N = logp_NV.gather(-1, target_N[:, None]).squeeze(-1)
    logp_samples_N = logp_NV.gather(-1, samples_NK).sum(-1)
    return -((1 - wrong_reward) * hits_N * logp_target_N + wrong_reward * logp_samples_N) / k
