"""Per-token estimators of KL(pi || pi_ref) from the log-probs of sampled tokens (Schulman's k1, k2,
k3, as verl's `kl_penalty` and TRL's `beta` term compute them): the policy-gradient loss's KL
penalty takes one of these as its `kl_estimator` part. Each is a pure function of two tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class KLEstimator:
    """Base of the estimators: `kl_BT` from the policy's and the reference's log-probs of the same
    tokens (sampled from the policy), differentiable in `logp_BT`."""

    def __call__(self, logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class K1(KLEstimator):
    """`log pi - log pi_ref`: unbiased, high variance, negative on some tokens."""

    def __call__(self, logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
        return logp_BT - ref_logp_BT


@dataclass(frozen=True)
class AbsKL(KLEstimator):
    """`|log pi - log pi_ref|` (verl's "abs")."""

    def __call__(self, logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
        return (logp_BT - ref_logp_BT).abs()


@dataclass(frozen=True)
class K2(KLEstimator):
    """`(log pi - log pi_ref)^2 / 2` (verl's "mse"): biased, low variance, always >= 0."""

    def __call__(self, logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
        return 0.5 * (logp_BT - ref_logp_BT).square()


@dataclass(frozen=True)
class K3(KLEstimator):
    """`exp(ref - logp) - (ref - logp) - 1` (GRPO's, verl's "low_var_kl"): unbiased and >= 0.

    `clamp` bounds each token's value to [-clamp, clamp] as verl does (10; its log-ratio is bounded
    to +-20 first, so that exp cannot overflow): one token the policy has made far likelier than the
    reference cannot dominate the loss. null: no bound (TRL's).

    Args:
        clamp: bound on each token's value (verl's 10); null: unbounded.
    """

    clamp: float | None = 10.0

    def __call__(self, logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
        diff_BT = ref_logp_BT - logp_BT
        if self.clamp is None:
            return torch.exp(diff_BT) - diff_BT - 1
        diff_BT = diff_BT.clamp(-20.0, 20.0)
        return (torch.exp(diff_BT) - diff_BT - 1).clamp(-self.clamp, self.clamp)
