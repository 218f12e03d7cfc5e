"""The unified policy-gradient estimator (HPT paper, "a unified view"):

    grad = E[ stable_mask * (1 / denominator) * A_t * grad pi(o_t) ]

assembled from small parts, each a callable selectable by `class_path`:

- denominator: `Current` (pi itself: the term is grad log pi, as in SFT and REINFORCE), `Old`
  (pi_old: the importance ratio of PPO / GRPO), `One` (no denominator: the term is grad pi);
- advantage (`losses.advantages`): `GroupNormalized`, `BatchNormalized`, `GroupCentered`
  (Dr.GRPO), `Constant` (SFT), `Reward` (no baseline: SFT on the accepted samples, "Self-SFT");
- stabilization mask: `NoMask`, `PPOClip` (separate low and high epsilon; verl's dual clip with
  `ratio_c`);
- aggregation over tokens (`losses.aggregation`): `SequenceMean` (GRPO), `TokenMean` (DAPO / BNPO,
  SFT), `ConstantLength` (Dr.GRPO), each normalised by the step's `Counts` (its rows and tokens).

Beside them, two optional terms: a KL penalty to the reference (`kl_coef` times a `kl_estimator`
from `losses.kl`) and a correction for the sampler's numerics (`sampler_correction`, from
`losses.importance`).

The fourth part of the paper's view, the data source (demonstrations or own rollouts), is which
rows a method feeds in. GRPO is the preset `grpo_preset()`; SFT is `Current(), Constant(1),
NoMask(), TokenMean()`, whose gradient is cross-entropy's (tested; the SFT method computes the same
NLL directly, `losses.sft.token_mean_nll`).

Each part is a pure function of tensors; `PolicyGradientLoss` composes them and returns
`(loss, metrics)`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_posttrain.losses.advantages import Advantage, GroupNormalized
from lit_posttrain.losses.aggregation import Aggregation, Counts, SequenceMean
from lit_posttrain.losses.importance import SamplerCorrection
from lit_posttrain.losses.kl import K3, KLEstimator

# --- denominators: return log(denominator) per token ---------------------------------------------


class Denominator:
    """Base of the denominators: log(denominator) per token."""

    def __call__(self, logp_BT: Tensor, old_logp_BT: Tensor | None) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Current(Denominator):
    """pi itself (detached): the term becomes grad log pi."""

    def __call__(self, logp_BT: Tensor, old_logp_BT: Tensor | None) -> Tensor:
        return logp_BT.detach()


@dataclass(frozen=True)
class Old(Denominator):
    """pi_old, the policy that sampled the rows: the importance ratio pi / pi_old."""

    def __call__(self, logp_BT: Tensor, old_logp_BT: Tensor | None) -> Tensor:
        if old_logp_BT is None:
            raise ValueError("the Old denominator needs old_logp_BT (the sampler's log-probs)")
        return old_logp_BT


@dataclass(frozen=True)
class One(Denominator):
    """No denominator: the term is grad pi itself."""

    def __call__(self, logp_BT: Tensor, old_logp_BT: Tensor | None) -> Tensor:
        return torch.zeros_like(logp_BT)


# --- stabilization masks: which token terms keep their gradient ----------------------------------------


class StabilizationMask:
    """Base of the masks: `__call__` says which token terms keep their gradient; `clipped` is the
    ratio a dropped term keeps in the loss (in place of its own)."""

    def __call__(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        raise NotImplementedError

    def clipped(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class NoMask(StabilizationMask):
    """Every term keeps its gradient."""

    def __call__(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        return torch.ones_like(ratio_BT, dtype=torch.bool)

    def clipped(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        return ratio_BT


@dataclass(frozen=True)
class PPOClip(StabilizationMask):
    """PPO's clip as a mask: a token whose ratio left `[1 - eps_low, 1 + eps_high]` on the side the
    advantage pushes toward loses its gradient. Identical to `-min(rho A, clip(rho) A)`.

    `ratio_c` adds the dual clip (Ye et al. 2020; verl's `clip_ratio_c`, 3.0 there): where A < 0 the
    loss is also bounded by `-ratio_c * A`, so a token whose ratio grew past `ratio_c` (a very
    off-policy token pushed down) keeps that constant and no gradient. null: off.

    Args:
        eps_low: a token pushed down (A < 0) keeps its gradient while its ratio is at least 1 - eps_low.
        eps_high: a token pushed up (A > 0) keeps its gradient while its ratio is at most 1 + eps_high.
        ratio_c: the dual clip's bound for A < 0 (verl's clip_ratio_c, 3.0 there; must be > 1); null: off.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    ratio_c: float | None = None

    def __post_init__(self) -> None:
        if self.ratio_c is not None and self.ratio_c <= 1:
            raise ValueError(f"PPOClip ratio_c (the dual clip) must be > 1, got {self.ratio_c}")

    def _dual_BT(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        if self.ratio_c is None:
            return torch.zeros_like(ratio_BT, dtype=torch.bool)
        return (adv_BT < 0) & (ratio_BT > self.ratio_c)

    def __call__(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        too_high_BT = (adv_BT > 0) & (ratio_BT > 1 + self.eps_high)
        too_low_BT = (adv_BT < 0) & (ratio_BT < 1 - self.eps_low)
        return ~(too_high_BT | too_low_BT | self._dual_BT(ratio_BT, adv_BT))

    def clipped(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        clamped_BT = ratio_BT.clamp(1 - self.eps_low, 1 + self.eps_high)
        if self.ratio_c is None:
            return clamped_BT
        return torch.where(self._dual_BT(ratio_BT.detach(), adv_BT), torch.full_like(ratio_BT, self.ratio_c), clamped_BT)


# --- the composed estimator -----------------------------------------------------------------------------


class PolicyGradientLoss:
    """`loss = aggregate( -w * where(mask, ratio * A, clipped_ratio * A (no gradient)) + kl_coef * KL )`,
    w the sampler correction's per-token weight (1 without one).

    Args:
        denominator: what the likelihood gradient is divided by: Current (pi), Old (pi_old, the default) or One.
        advantage: rewards and group ids to a per-sequence advantage (default GroupNormalized).
        stabilization: which token terms keep their gradient (default PPOClip(0.2, 0.2); NoMask: all).
        aggregation: how per-token losses become one number (default SequenceMean).
        kl_coef: weight of the KL penalty to the reference model (0: off, and no reference forward pass).
        kl_estimator: the per-token KL estimate the penalty uses: K3 (default, clamped at 10 as verl does), K1, K2 or AbsKL (lit_posttrain.losses.kl).
        sampler_correction: reweights each token for the gap between the sampler's and the trainer's numerics: TruncatedIS, MaskedIS, SequenceTruncatedIS or SequenceMaskedIS (lit_posttrain.losses.importance), e.g. TruncatedIS(cap=2.0) with a vLLM engine (null: none).
    """

    def __init__(
        self,
        denominator: Denominator | None = None,
        advantage: Advantage | None = None,
        stabilization: StabilizationMask | None = None,
        aggregation: Aggregation | None = None,
        kl_coef: float = 0.0,
        kl_estimator: KLEstimator | None = None,
        sampler_correction: SamplerCorrection | None = None,
    ) -> None:
        if kl_coef < 0:
            raise ValueError(f"PolicyGradientLoss kl_coef must be >= 0, got {kl_coef}")
        self.denominator = denominator or Old()
        self.advantage = advantage or GroupNormalized()
        self.stabilization = stabilization or PPOClip()
        self.aggregation = aggregation or SequenceMean()
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator or K3()
        self.sampler_correction = sampler_correction

    def __repr__(self) -> str:
        parts = (self.denominator, self.advantage, self.stabilization, self.aggregation)
        return (
            f"PolicyGradientLoss({', '.join(map(repr, parts))}, kl_coef={self.kl_coef}, "
            f"kl_estimator={self.kl_estimator!r}, sampler_correction={self.sampler_correction!r})"
        )

    def for_budget(self, max_new_tokens: int) -> PolicyGradientLoss:
        """This loss for completions of at most `max_new_tokens`: an aggregation that normalises by
        the completion budget (`ConstantLength` without `max_tokens`) takes it from there."""
        loss = copy.copy(self)
        loss.aggregation = self.aggregation.for_budget(max_new_tokens)
        return loss

    def __call__(
        self,
        logp_BT: Tensor,
        mask_BT: Tensor,
        adv_B: Tensor | None = None,
        adv_BT: Tensor | None = None,
        old_logp_BT: Tensor | None = None,
        ref_logp_BT: Tensor | None = None,
        sampler_logp_BT: Tensor | None = None,
        counts: Counts | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sequence advantages `adv_B` or per-token `adv_BT` (distillation); see the class doc.
        `sampler_logp_BT`, the log-probs of the engine that sampled the tokens, is needed by a
        sampler correction, which weighs the trainer's `old_logp_BT` against it. `counts`: the
        whole step's rows and tokens when these rows are part of it (default: these rows'). The
        metrics are means over these rows' tokens."""
        if (adv_B is None) == (adv_BT is None):
            raise ValueError("pass exactly one of adv_B and adv_BT")
        if adv_BT is None:
            adv_BT = adv_B[:, None].expand_as(logp_BT)
        mask_BT = mask_BT.to(logp_BT.dtype)
        tokens = mask_BT.sum().clamp(min=1)
        ratio_BT = torch.exp(logp_BT - self.denominator(logp_BT, old_logp_BT))
        keep_BT = self.stabilization(ratio_BT.detach(), adv_BT)
        clipped_BT = self.stabilization.clipped(ratio_BT, adv_BT)
        # Where the mask drops a term its value stays in the loss (so the loss equals PPO's
        # clipped surrogate exactly) but carries no gradient.
        surrogate_BT = torch.where(keep_BT, ratio_BT * adv_BT, (clipped_BT * adv_BT).detach())
        loss_BT = -surrogate_BT
        dropped_BT = (~keep_BT).to(logp_BT.dtype) * mask_BT
        # Which side: below 1 - eps_low (A < 0 pushing the ratio down), or above 1 + eps_high (A > 0;
        # and the dual clip's, A < 0 above ratio_c).
        below_BT = (ratio_BT.detach() < 1).to(logp_BT.dtype)
        metrics = {
            "clip_fraction": dropped_BT.sum() / tokens,
            "clip_fraction_low": (dropped_BT * below_BT).sum() / tokens,
            "clip_fraction_high": (dropped_BT * (1 - below_BT)).sum() / tokens,
        }
        if self.sampler_correction is not None:
            if old_logp_BT is None or sampler_logp_BT is None:
                raise ValueError("a sampler correction needs old_logp_BT (the trainer's) and sampler_logp_BT (the engine's)")
            weight_BT = self.sampler_correction(old_logp_BT, sampler_logp_BT, mask_BT)
            loss_BT = weight_BT * loss_BT
            metrics["sampler_weight"] = (weight_BT * mask_BT).sum() / tokens
        if self.kl_coef > 0:
            if ref_logp_BT is None:
                raise ValueError("kl_coef > 0 needs ref_logp_BT")
            kl_BT = self.kl_estimator(logp_BT, ref_logp_BT)
            loss_BT = loss_BT + self.kl_coef * kl_BT
            metrics["kl"] = (kl_BT * mask_BT).sum() / tokens
        loss = self.aggregation(loss_BT, mask_BT, counts)
        return loss, {k: v.detach() for k, v in metrics.items()}


def grpo_preset(
    eps_low: float = 0.2, eps_high: float = 0.2, kl_coef: float = 0.0, advantage: Advantage | None = None
) -> PolicyGradientLoss:
    """GRPO: own rollouts, denominator pi_old, group-normalised advantage (unless `advantage` is
    given), PPO clip, sequence mean, the k3 KL to the reference weighted by `kl_coef` (0: off)."""
    return PolicyGradientLoss(Old(), advantage or GroupNormalized(), PPOClip(eps_low, eps_high), SequenceMean(), kl_coef)
