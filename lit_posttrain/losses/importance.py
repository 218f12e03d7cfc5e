"""The sampler's numerics, measured and optionally corrected: an engine whose kernels or precision
differ from the trainer's (vLLM, a bf16 sampling copy) samples from a slightly different
distribution than the one being trained. Pure functions of the trainer's old log-probs and the
sampler's, on the completion tokens.

The corrections (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
training"; TRL's `vllm_importance_sampling_mode`, verl's rollout importance sampling) weigh each
token's policy-gradient term by `w = pi_old / pi_sampler`, detached, bounded one of two ways at one
of two levels:
- truncate: `min(w, cap)`; mask: `w` where `w <= cap`, else 0 (the term is dropped);
- token level: each token's own ratio; sequence level: the product of a sequence's ratios, shared
  by every token of it (the whole sequence kept, capped or dropped together).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def sampler_mismatch(old_logp_BT: Tensor, sampler_logp_BT: Tensor, mask_BT: Tensor) -> dict[str, Tensor]:
    """How far the engine that sampled the tokens is from the trainer on those tokens: the mean
    absolute log-prob difference, and the k3 estimate of KL(sampler || trainer) (the tokens were
    drawn from the sampler: with log r = trainer - sampler, `exp(log r) - log r - 1` >= 0)."""
    mask_BT = mask_BT.to(old_logp_BT.dtype)
    count = mask_BT.sum().clamp(min=1)
    log_ratio_BT = (old_logp_BT - sampler_logp_BT).detach()
    return {
        "sampler_abs_diff": (log_ratio_BT.abs() * mask_BT).sum() / count,
        "sampler_kl": ((torch.exp(log_ratio_BT) - log_ratio_BT - 1) * mask_BT).sum() / count,
    }


class SamplerCorrection:
    """Base of the corrections: each token's weight from the trainer's and the sampler's log-probs
    (a plain class, so that a configuration can name any subclass by `class_path`)."""

    cap: float

    def log_ratio(self, log_ratio_BT: Tensor, mask_BT: Tensor) -> Tensor:
        """Token level: each token's own log-ratio."""
        return log_ratio_BT

    def bound(self, ratio_BT: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, old_logp_BT: Tensor, sampler_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
        log_ratio_BT = ((old_logp_BT - sampler_logp_BT) * mask_BT).detach()
        return self.bound(torch.exp(self.log_ratio(log_ratio_BT, mask_BT)))


@dataclass(frozen=True)
class _Capped:
    """The cap every correction has (each documents it under Args, for `--help`)."""

    cap: float = 2.0

    def __post_init__(self) -> None:
        if self.cap <= 0:
            raise ValueError(f"{type(self).__name__} cap must be > 0, got {self.cap}")


class _Sequence:
    """Sequence level: every token takes its sequence's summed log-ratio (padding adds 0)."""

    def log_ratio(self, log_ratio_BT: Tensor, mask_BT: Tensor) -> Tensor:
        return log_ratio_BT.sum(-1, keepdim=True).expand_as(log_ratio_BT)


class _Truncate:
    def bound(self, ratio_BT: Tensor) -> Tensor:
        return ratio_BT.clamp(max=self.cap)


class _Mask:
    def bound(self, ratio_BT: Tensor) -> Tensor:
        return torch.where(ratio_BT <= self.cap, ratio_BT, 0.0)


@dataclass(frozen=True)
class TruncatedIS(_Truncate, _Capped, SamplerCorrection):
    """Token level, truncated: `min(pi_old(o_t) / pi_sampler(o_t), cap)` (TRL's token_truncate).

    Args:
        cap: the largest ratio kept; larger ones are truncated to it.
    """


@dataclass(frozen=True)
class MaskedIS(_Mask, _Capped, SamplerCorrection):
    """Token level, masked: the token's ratio, or 0 where it exceeds `cap` (TRL's token_mask).

    Args:
        cap: the largest ratio kept; a token above it gets weight 0.
    """


@dataclass(frozen=True)
class SequenceTruncatedIS(_Sequence, _Truncate, _Capped, SamplerCorrection):
    """Sequence level, truncated: `min(prod_t ratio_t, cap)` for every token of the sequence (TRL's
    sequence_truncate).

    Args:
        cap: the largest sequence ratio kept; larger ones are truncated to it.
    """


@dataclass(frozen=True)
class SequenceMaskedIS(_Sequence, _Mask, _Capped, SamplerCorrection):
    """Sequence level, masked: the sequence's ratio product, or 0 for all its tokens where it
    exceeds `cap` (TRL's sequence_mask).

    Args:
        cap: the largest sequence ratio kept; a sequence above it gets weight 0.
    """
