"""The unified policy-gradient estimator (HPT paper, "a unified view"):

    grad = E[ stable_mask * (1 / denominator) * A_t * grad pi(o_t) ]

assembled from small parts, each a callable selectable by `class_path`:

- denominator: `Current` (pi itself: the term is grad log pi, as in SFT and REINFORCE), `Old`
  (pi_old: the importance ratio of PPO / GRPO), `One` (no denominator: the term is grad pi);
- advantage: `GroupNormalized`, `BatchNormalized`, `GroupCentered` (Dr.GRPO), `Constant` (SFT),
  `Reward` (no baseline: SFT on the accepted samples, "Self-SFT");
- stabilization mask: `NoMask`, `PPOClip` (separate low and high epsilon);
- aggregation over tokens: `SequenceMean` (GRPO), `TokenMean` (DAPO / BNPO, SFT), `ConstantLength`
  (Dr.GRPO).

The fourth part of the paper's view, the data source (demonstrations or own rollouts), is which
rows a method feeds in. Every named method is a preset: `sft_preset()`, `grpo_preset()`.

Each part is a pure function of tensors; `PolicyGradientLoss` composes them and returns
`(loss, metrics)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lit_posttrain.groups import group_mean_std

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


# --- advantages: from rewards and group ids to one advantage per sequence ---------------------------


class Advantage:
    """Base of the advantages: rewards and group ids to one advantage per sequence."""

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class GroupNormalized(Advantage):
    """GRPO: `(r - mean of the group) / (std of the group + eps)`. A group whose rewards are all
    equal gets zero advantage (0 / eps), never NaN."""

    eps: float = 1e-4

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        mean_B, std_B = group_mean_std(reward_B, group_B)
        return (reward_B - mean_B) / (std_B + self.eps)


@dataclass(frozen=True)
class BatchNormalized(Advantage):
    """Centred within the group, scaled by the whole batch's reward std (Lite PPO / REINFORCE++)."""

    eps: float = 1e-4

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        mean_B, _ = group_mean_std(reward_B, group_B)
        std = reward_B.std() if len(reward_B) > 1 else reward_B.new_zeros(())
        return (reward_B - mean_B) / (std + self.eps)


@dataclass(frozen=True)
class GroupCentered(Advantage):
    """Dr.GRPO: `r - mean of the group`, no scaling (std scaling favours easy and hard prompts)."""

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        mean_B, _ = group_mean_std(reward_B, group_B)
        return reward_B - mean_B


@dataclass(frozen=True)
class Reward(Advantage):
    """The reward itself, no baseline. With a 0/1 verifier this is SFT on the model's own accepted
    samples (rejection-sampling fine-tuning, the "Self-SFT" of arXiv 2510.18874), refreshed every
    step: a rejected sample adds no gradient, an accepted one is trained as a demonstration."""

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        return reward_B.float()


@dataclass(frozen=True)
class Constant(Advantage):
    """The same advantage for every sequence: 1 for SFT on demonstrations."""

    value: float = 1.0

    def __call__(self, reward_B: Tensor, group_B: Tensor) -> Tensor:
        return torch.full(group_B.shape, self.value, dtype=torch.float32, device=group_B.device)


# --- stabilization masks: which token terms keep their gradient ----------------------------------------


class StabilizationMask:
    """Base of the masks: `__call__` says which token terms keep their gradient; `clipped` is the
    value a dropped term keeps in the loss."""

    def __call__(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        raise NotImplementedError

    def clipped(self, ratio_BT: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class NoMask(StabilizationMask):
    """Every term keeps its gradient."""

    def __call__(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        return torch.ones_like(ratio_BT, dtype=torch.bool)

    def clipped(self, ratio_BT: Tensor) -> Tensor:
        return ratio_BT


@dataclass(frozen=True)
class PPOClip(StabilizationMask):
    """PPO's clip as a mask: a token whose ratio left `[1 - eps_low, 1 + eps_high]` on the side the
    advantage pushes toward loses its gradient. Identical to `-min(rho A, clip(rho) A)`."""

    eps_low: float = 0.2
    eps_high: float = 0.2

    def __call__(self, ratio_BT: Tensor, adv_BT: Tensor) -> Tensor:
        too_high_BT = (adv_BT > 0) & (ratio_BT > 1 + self.eps_high)
        too_low_BT = (adv_BT < 0) & (ratio_BT < 1 - self.eps_low)
        return ~(too_high_BT | too_low_BT)

    def clipped(self, ratio_BT: Tensor) -> Tensor:
        return ratio_BT.clamp(1 - self.eps_low, 1 + self.eps_high)


# --- aggregations: per-token losses to one number ---------------------------------------------------------


class Aggregation:
    """Base of the aggregations: per-token losses (and their mask) to one number."""

    def __call__(self, loss_BT: Tensor, mask_BT: Tensor, num_tokens: float | None = None) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class SequenceMean(Aggregation):
    """GRPO's original: mean over each sequence's tokens, then over sequences."""

    def __call__(self, loss_BT: Tensor, mask_BT: Tensor, num_tokens: float | None = None) -> Tensor:
        per_sequence_B = (loss_BT * mask_BT).sum(-1) / mask_BT.sum(-1).clamp(min=1)
        return per_sequence_B.mean()


@dataclass(frozen=True)
class TokenMean(Aggregation):
    """Sum over every token divided by the token count (DAPO, BNPO, SFT). `num_tokens`, when given,
    replaces this batch's count: passed the accumulation window's share (as `SFT.token_normaliser`
    computes it) the mean is exact over the whole window. The on-policy methods pass none: their
    window's completions are sampled micro-batch by micro-batch, so its token count is not known
    when the first micro-batch's loss is taken, and each micro-batch is its own mean."""

    def __call__(self, loss_BT: Tensor, mask_BT: Tensor, num_tokens: float | None = None) -> Tensor:
        denominator = mask_BT.sum().clamp(min=1) if num_tokens is None else num_tokens
        return (loss_BT * mask_BT).sum() / denominator


@dataclass(frozen=True)
class ConstantLength(Aggregation):
    """Dr.GRPO: sum over tokens divided by `batch size * max_tokens`, a constant, so that long
    and short completions are not weighted differently."""

    max_tokens: int = 64

    def __call__(self, loss_BT: Tensor, mask_BT: Tensor, num_tokens: float | None = None) -> Tensor:
        return (loss_BT * mask_BT).sum() / (mask_BT.shape[0] * self.max_tokens)


# --- the sampler's numerics: measured, and optionally corrected ------------------------------------------


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


@dataclass(frozen=True)
class TruncatedIS:
    """Truncated importance sampling for a sampler whose numerics differ from the trainer's (a vLLM
    engine; Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
    training", as verl, TRL and prime-rl offer it): each token's policy-gradient term is weighted by
    `min(pi_old(o_t) / pi_sampler(o_t), cap)`, the trainer's old probability over the sampler's,
    detached. The cap bounds the variance a rare token with a tiny sampler probability would add."""

    cap: float = 2.0

    def __post_init__(self) -> None:
        if self.cap <= 0:
            raise ValueError(f"TruncatedIS cap must be > 0, got {self.cap}")

    def __call__(self, old_logp_BT: Tensor, sampler_logp_BT: Tensor) -> Tensor:
        return torch.exp(old_logp_BT - sampler_logp_BT).detach().clamp(max=self.cap)


# --- the composed estimator -----------------------------------------------------------------------------


def k3_kl(logp_BT: Tensor, ref_logp_BT: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): `exp(ref - logp) - (ref - logp) - 1` (>= 0)."""
    diff_BT = ref_logp_BT - logp_BT
    return torch.exp(diff_BT) - diff_BT - 1


class PolicyGradientLoss:
    """`loss = aggregate( -w * where(mask, ratio * A, clipped_ratio * A (no gradient)) + kl_coef * k3 )`,
    w the sampler correction's per-token weight (1 without one).

    Args:
        denominator: what the likelihood gradient is divided by: Current (pi), Old (pi_old, the default) or One.
        advantage: rewards and group ids to a per-sequence advantage (default GroupNormalized).
        stabilization: which token terms keep their gradient (default PPOClip(0.2, 0.2); NoMask: all).
        aggregation: how per-token losses become one number (default SequenceMean).
        kl_coef: weight of the k3 KL penalty to the reference model (0: off, and no reference forward pass).
        sampler_correction: reweights each token for the gap between the sampler's and the trainer's numerics, e.g. TruncatedIS(cap=2.0) with a vLLM engine (null: none).
    """

    def __init__(
        self,
        denominator: Denominator | None = None,
        advantage: Advantage | None = None,
        stabilization: StabilizationMask | None = None,
        aggregation: Aggregation | None = None,
        kl_coef: float = 0.0,
        sampler_correction: TruncatedIS | None = None,
    ) -> None:
        if kl_coef < 0:
            raise ValueError(f"PolicyGradientLoss kl_coef must be >= 0, got {kl_coef}")
        self.denominator = denominator or Old()
        self.advantage = advantage or GroupNormalized()
        self.stabilization = stabilization or PPOClip()
        self.aggregation = aggregation or SequenceMean()
        self.kl_coef = kl_coef
        self.sampler_correction = sampler_correction

    def __repr__(self) -> str:
        parts = (self.denominator, self.advantage, self.stabilization, self.aggregation)
        return f"PolicyGradientLoss({', '.join(map(repr, parts))}, kl_coef={self.kl_coef}, sampler_correction={self.sampler_correction!r})"

    def __call__(
        self,
        logp_BT: Tensor,
        mask_BT: Tensor,
        adv_B: Tensor | None = None,
        adv_BT: Tensor | None = None,
        old_logp_BT: Tensor | None = None,
        ref_logp_BT: Tensor | None = None,
        num_tokens: float | None = None,
        sampler_logp_BT: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sequence advantages `adv_B` or per-token `adv_BT` (distillation); see the class doc.
        `sampler_logp_BT`, the log-probs of the engine that sampled the tokens, is needed by a
        sampler correction, which weighs the trainer's `old_logp_BT` against it."""
        if (adv_B is None) == (adv_BT is None):
            raise ValueError("pass exactly one of adv_B and adv_BT")
        if adv_BT is None:
            adv_BT = adv_B[:, None].expand_as(logp_BT)
        mask_BT = mask_BT.to(logp_BT.dtype)
        ratio_BT = torch.exp(logp_BT - self.denominator(logp_BT, old_logp_BT))
        keep_BT = self.stabilization(ratio_BT.detach(), adv_BT)
        clipped_BT = self.stabilization.clipped(ratio_BT)
        # Where the mask drops a term its value stays in the loss (so the loss equals PPO's
        # clipped surrogate exactly) but carries no gradient.
        surrogate_BT = torch.where(keep_BT, ratio_BT * adv_BT, (clipped_BT * adv_BT).detach())
        loss_BT = -surrogate_BT
        metrics = {"clip_fraction": ((~keep_BT).to(logp_BT.dtype) * mask_BT).sum() / mask_BT.sum().clamp(min=1)}
        if self.sampler_correction is not None:
            if old_logp_BT is None or sampler_logp_BT is None:
                raise ValueError("a sampler correction needs old_logp_BT (the trainer's) and sampler_logp_BT (the engine's)")
            weight_BT = self.sampler_correction(old_logp_BT, sampler_logp_BT)
            loss_BT = weight_BT * loss_BT
            metrics["sampler_weight"] = (weight_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1)
        if self.kl_coef > 0:
            if ref_logp_BT is None:
                raise ValueError("kl_coef > 0 needs ref_logp_BT")
            kl_BT = k3_kl(logp_BT, ref_logp_BT)
            loss_BT = loss_BT + self.kl_coef * kl_BT
            metrics["kl"] = ((kl_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1)).detach()
        loss = self.aggregation(loss_BT, mask_BT, num_tokens)
        return loss, {k: v.detach() for k, v in metrics.items()}


def sft_preset() -> PolicyGradientLoss:
    """SFT as a policy gradient: demonstrations, denominator pi, advantage 1, no mask, token mean.
    Its gradient is exactly cross-entropy's."""
    return PolicyGradientLoss(Current(), Constant(1.0), NoMask(), TokenMean())


def grpo_preset(
    eps_low: float = 0.2, eps_high: float = 0.2, kl_coef: float = 0.0, advantage: Advantage | None = None
) -> PolicyGradientLoss:
    """GRPO: own rollouts, denominator pi_old, group-normalised advantage (unless `advantage` is
    given), PPO clip, sequence mean, the k3 KL to the reference weighted by `kl_coef` (0: off)."""
    return PolicyGradientLoss(Old(), advantage or GroupNormalized(), PPOClip(eps_low, eps_high), SequenceMean(), kl_coef)
