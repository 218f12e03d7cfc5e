"""The unified estimator's parts against hand-computed values and known identities."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_posttrain.losses.advantages import BatchNormalized, Constant, GroupCentered, GroupNormalized, Reward
from lit_posttrain.losses.aggregation import ConstantLength, Counts, SequenceMean, TokenMean
from lit_posttrain.losses.importance import (
    MaskedIS,
    SequenceMaskedIS,
    SequenceTruncatedIS,
    TruncatedIS,
    sampler_mismatch,
)
from lit_posttrain.losses.kl import K1, K2, K3, AbsKL
from lit_posttrain.losses.policy_gradient import (
    Current,
    NoMask,
    Old,
    One,
    PolicyGradientLoss,
    PPOClip,
    grpo_preset,
)

REWARD_B = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
GROUP_B = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def test_group_normalized_advantage_hand_computed():
    adv_B = GroupNormalized()(REWARD_B, GROUP_B)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of [1, 0, 0, 1]
    expected = 0.5 / (std + 1e-4)
    assert torch.allclose(adv_B, torch.tensor([expected, -expected, -expected, expected, 0, 0, 0, 0]))


def test_batch_normalized_advantage_hand_computed():
    adv_B = BatchNormalized()(REWARD_B, GROUP_B)
    batch_std = math.sqrt((2 * 0.75**2 + 6 * 0.25**2) / 7)
    expected = 0.5 / (batch_std + 1e-4)
    assert torch.allclose(adv_B, torch.tensor([expected, -expected, -expected, expected, 0, 0, 0, 0]))


def test_group_centered_and_constant_advantages():
    assert GroupCentered()(REWARD_B, GROUP_B).tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    assert Constant(1.0)(REWARD_B, GROUP_B).tolist() == [1.0] * 8
    assert Reward()(REWARD_B, GROUP_B).tolist() == REWARD_B.tolist()  # no baseline: rejected samples get 0


def test_reward_advantage_trains_only_the_accepted_samples_as_sft_does():
    """Self-SFT through the estimator: with 0/1 rewards its gradient is SFT's on the accepted rows
    alone, scaled by their share of the tokens (TokenMean counts every sampled token)."""
    torch.manual_seed(2)
    logp_BT = (torch.randn(4, 5) - 1).requires_grad_()
    mask_BT = torch.ones(4, 5, dtype=torch.bool)
    reward_B = torch.tensor([1.0, 0.0, 1.0, 0.0])
    adv_B = Reward()(reward_B, torch.zeros(4, dtype=torch.long))
    loss, _ = PolicyGradientLoss(Old(), Reward(), PPOClip(0.2, 0.2), TokenMean())(logp_BT, mask_BT, adv_B=adv_B, old_logp_BT=logp_BT.detach())
    (grad_BT,) = torch.autograd.grad(loss, logp_BT)
    accepted = reward_B.bool()
    nll = -(logp_BT[accepted]).mean() * accepted.float().mean()  # SFT's token mean over the accepted, times their share
    (expected_BT,) = torch.autograd.grad(nll, logp_BT)
    assert torch.allclose(grad_BT, expected_BT) and grad_BT[~accepted].abs().sum() == 0


@pytest.mark.parametrize("advantage", [GroupNormalized(), BatchNormalized(), GroupCentered()])
def test_zero_variance_groups_give_zero_advantage_and_no_nan(advantage):
    equal_B = torch.ones(8)
    adv_B = advantage(equal_B, GROUP_B)
    assert torch.equal(adv_B, torch.zeros(8))
    single_B = advantage(torch.tensor([3.0]), torch.tensor([0]))  # a group of one
    assert torch.isfinite(single_B).all()
    logp_BT = torch.randn(8, 3, requires_grad=True)
    loss, _ = grpo_preset(advantage=advantage)(logp_BT, torch.ones(8, 3), adv_B=adv_B, old_logp_BT=logp_BT.detach())
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp_BT.grad, torch.zeros(8, 3))


@pytest.mark.parametrize("advantage", [GroupNormalized(), BatchNormalized(), GroupCentered()])
@pytest.mark.parametrize("value", [0.1, 0.3, 0.7])
def test_a_group_of_equal_inexact_rewards_gets_exactly_zero_advantage(advantage, value):
    """float32's group mean of 0.1s (0.3s, 0.7s) is a few ulps off 0.1; divided by a std of the
    same size, the advantage came out up to 1e-3 with an arbitrary sign, and zero-advantage rows
    were then not skipped. Group 1 has a spread and keeps its advantages."""
    reward_B = torch.tensor([value] * 8 + [0.0, 1.0, 1.0, 0.0])
    group_B = torch.tensor([0] * 8 + [1] * 4)
    adv_B = advantage(reward_B, group_B)
    assert torch.equal(adv_B[:8], torch.zeros(8))
    assert (adv_B[8:].abs() > 0.1).all()


def test_aggregations_hand_computed():
    loss_BT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask_BT = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert SequenceMean()(loss_BT, mask_BT).item() == pytest.approx((2.0 + 4.0) / 2)
    assert TokenMean()(loss_BT, mask_BT).item() == pytest.approx(10.0 / 4)
    assert ConstantLength(max_tokens=4)(loss_BT, mask_BT).item() == pytest.approx(10.0 / (2 * 4))
    # Normalised by a whole step's counts (these two rows are part of 5 rows, 8 tokens).
    step = Counts(rows=5, tokens=8)
    assert SequenceMean()(loss_BT, mask_BT, step).item() == pytest.approx((2.0 + 4.0) / 5)
    assert TokenMean()(loss_BT, mask_BT, step).item() == pytest.approx(10.0 / 8)
    assert ConstantLength(max_tokens=4)(loss_BT, mask_BT, step).item() == pytest.approx(10.0 / (5 * 4))


@pytest.mark.parametrize("aggregation", [SequenceMean(), TokenMean(), ConstantLength(max_tokens=6)])
def test_parts_of_a_step_normalised_by_its_counts_add_up_to_the_whole(aggregation):
    torch.manual_seed(3)
    logp_BT = (torch.randn(5, 6) * 0.3 - 1).requires_grad_()
    old_BT = logp_BT.detach() + torch.randn(5, 6) * 0.3
    mask_BT = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0], [1] * 3 + [0] * 3, [1] + [0] * 5, [1] * 5 + [0]]).bool()
    adv_B = torch.tensor([1.0, -0.5, 2.0, -1.0, 0.3])
    loss_fn = PolicyGradientLoss(Old(), GroupNormalized(), PPOClip(), aggregation)
    whole, _ = loss_fn(logp_BT, mask_BT, adv_B=adv_B, old_logp_BT=old_BT)
    step = Counts.of(mask_BT)
    parts = sum(
        loss_fn(logp_BT[rows], mask_BT[rows], adv_B=adv_B[rows], old_logp_BT=old_BT[rows], counts=step)[0]
        for rows in ([0, 3], [1], [2, 4])
    )
    assert parts.item() == pytest.approx(whole.item(), rel=1e-6)
    (grad_whole,) = torch.autograd.grad(whole, logp_BT)
    (grad_parts,) = torch.autograd.grad(parts, logp_BT)
    assert torch.allclose(grad_parts, grad_whole, atol=1e-7)


def test_constant_length_defaults_to_the_completion_budget():
    with pytest.raises(ValueError, match="ConstantLength needs max_tokens"):
        ConstantLength()(torch.ones(1, 2), torch.ones(1, 2))
    loss = PolicyGradientLoss(aggregation=ConstantLength()).for_budget(12)
    assert loss.aggregation == ConstantLength(max_tokens=12)
    assert PolicyGradientLoss(aggregation=ConstantLength(max_tokens=5)).for_budget(12).aggregation.max_tokens == 5
    assert PolicyGradientLoss().for_budget(12).aggregation == SequenceMean()


def test_dual_clip_hand_computed_against_verls_formula():
    """Ratios 4, 2 and 4 (logp 0 against old log(1/4), log(1/2)); eps 0.2, ratio_c 3. A = -1 with
    ratio 4: PPO's loss is 4 (gradient kept); the dual clip bounds it by -c A = 3, no gradient.
    A = -1 with ratio 2 < c: 2, gradient kept. A = +1 with ratio 4: PPO's clip, 1.2's -1.2."""
    logp_BT = torch.zeros(3, 1, requires_grad=True)
    old_BT = torch.log(torch.tensor([[0.25], [0.5], [0.25]]))
    adv_B = torch.tensor([-1.0, -1.0, 1.0])
    loss_fn = PolicyGradientLoss(Old(), Constant(), PPOClip(0.2, 0.2, ratio_c=3.0), TokenMean())
    loss, metrics = loss_fn(logp_BT, torch.ones(3, 1), adv_B=adv_B, old_logp_BT=old_BT)
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3)
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 3)
    # Both clipped tokens are above 1 + eps (the dual clip's at ratio 4 > c, PPO's at 4 > 1.2).
    assert (metrics["clip_fraction_low"].item(), metrics["clip_fraction_high"].item()) == (0.0, pytest.approx(2 / 3))
    (grad,) = torch.autograd.grad(loss, logp_BT)
    assert torch.allclose(grad, torch.tensor([[0.0], [2.0 / 3], [0.0]]))  # d(-A ratio)/dlogp = -A ratio, over 3 tokens

    # verl's `compute_policy_loss` (clip_ratio_c), written out on random values.
    torch.manual_seed(4)
    logp_BT = (torch.randn(4, 5) - 1).requires_grad_()
    old_BT = logp_BT.detach() + torch.randn(4, 5)
    adv_BT = torch.randn(4, 1).expand(4, 5)
    ours, _ = PolicyGradientLoss(Old(), Constant(), PPOClip(0.2, 0.28, ratio_c=3.0), TokenMean())(
        logp_BT, torch.ones(4, 5), adv_BT=adv_BT, old_logp_BT=old_BT
    )
    ratio = torch.exp(logp_BT - old_BT)
    clipped = torch.maximum(-adv_BT * ratio, -adv_BT * ratio.clamp(0.8, 1.28))
    verl = torch.where(adv_BT < 0, torch.minimum(-adv_BT * 3.0, clipped), clipped).mean()
    assert ours.item() == pytest.approx(verl.item(), rel=1e-6)
    (g_ours,) = torch.autograd.grad(ours, logp_BT)
    (g_verl,) = torch.autograd.grad(verl, logp_BT)
    assert torch.allclose(g_ours, g_verl, atol=1e-7)
    with pytest.raises(ValueError, match="ratio_c"):
        PPOClip(ratio_c=1.0)


def test_clipped_surrogate_hand_computed():
    # ratio = e on every token: above 1 + 0.2.
    logp_BT = torch.zeros(2, 3, requires_grad=True)
    old_BT = torch.full((2, 3), -1.0)
    adv_B = torch.tensor([1.0, -1.0])
    loss, metrics = grpo_preset()(logp_BT, torch.ones(2, 3), adv_B=adv_B, old_logp_BT=old_BT)
    # A = +1: min(e, 1.2) = 1.2, clipped, no gradient. A = -1: min(-e, -1.2) = -e, gradient -A * e = e.
    assert loss.item() == pytest.approx((-1.2 + math.e) / 2)
    assert metrics["clip_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    assert torch.allclose(logp_BT.grad[0], torch.zeros(3))
    assert torch.allclose(logp_BT.grad[1], torch.full((3,), math.e / 3 / 2))


def test_clip_epsilons_are_separate():
    clip = PPOClip(eps_low=0.1, eps_high=0.3)
    ratio_BT = torch.tensor([[1.25, 1.35, 0.95, 0.85]])
    assert clip(ratio_BT, torch.ones(1, 4)).tolist() == [[True, False, True, True]]
    assert clip(ratio_BT, -torch.ones(1, 4)).tolist() == [[True, True, True, False]]


def test_kl_estimators_hand_computed():
    logp_BT, ref_BT = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]]))
    assert K1()(logp_BT, ref_BT).item() == pytest.approx(math.log(2))
    assert K1()(ref_BT, logp_BT).item() == pytest.approx(-math.log(2))
    assert AbsKL()(ref_BT, logp_BT).item() == pytest.approx(math.log(2))
    assert K2()(logp_BT, ref_BT).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert K3()(logp_BT, ref_BT).item() == pytest.approx(0.5 + math.log(2) - 1)
    for estimator in (K1(), K2(), K3(), AbsKL()):
        assert estimator(ref_BT, ref_BT).item() == 0.0


def test_k3_is_clamped_at_10_as_verl_does():
    """A token the reference finds 1e6 times likelier than the policy: k3 is 1e6 - log(1e6) - 1
    unclamped; verl's clamp holds it at 10, with no gradient."""
    logp_BT = torch.tensor([[math.log(1e-6)]], requires_grad=True)
    ref_BT = torch.zeros(1, 1)
    assert K3(clamp=None)(logp_BT, ref_BT).item() == pytest.approx(1e6 - math.log(1e6) - 1, rel=1e-5)
    clamped = K3()(logp_BT, ref_BT)
    assert clamped.item() == 10.0
    (grad,) = torch.autograd.grad(clamped.sum(), logp_BT)
    assert grad.item() == 0.0
    far_BT = torch.tensor([[-1000.0]])  # exp of the raw log-ratio would overflow; bounded at 20 first
    assert torch.isfinite(K3(clamp=1e12)(far_BT, ref_BT)).all()


def test_the_kl_estimator_is_a_part_of_the_loss():
    logp_BT, ref_BT = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]]))
    loss, metrics = grpo_preset(kl_coef=0.1)(logp_BT, torch.ones(1, 1), adv_B=torch.zeros(1), old_logp_BT=logp_BT, ref_logp_BT=ref_BT)
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1))
    assert metrics["kl"].item() == pytest.approx(0.5 + math.log(2) - 1)
    k1 = PolicyGradientLoss(Old(), Constant(0.0), PPOClip(), TokenMean(), kl_coef=0.1, kl_estimator=K1())
    loss, metrics = k1(logp_BT, torch.ones(1, 1), adv_B=torch.zeros(1), old_logp_BT=logp_BT, ref_logp_BT=ref_BT)
    assert loss.item() == pytest.approx(0.1 * math.log(2)) and metrics["kl"].item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="ref_logp_BT"):
        grpo_preset(kl_coef=0.1)(logp_BT, torch.ones(1, 1), adv_B=torch.zeros(1), old_logp_BT=logp_BT)


def test_sft_as_the_estimators_parts_has_cross_entropys_gradient():
    torch.manual_seed(0)
    logits_BTV = torch.randn(3, 5, 7, requires_grad=True)
    targets_BT = torch.randint(0, 7, (3, 5))
    mask_BT = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    logp_BT = torch.log_softmax(logits_BTV, -1).gather(-1, targets_BT[..., None]).squeeze(-1)
    loss, _ = PolicyGradientLoss(Current(), Constant(1.0), NoMask(), TokenMean())(logp_BT, mask_BT, adv_B=torch.ones(3))
    (grad_preset,) = torch.autograd.grad(loss, logits_BTV)
    ce = F.cross_entropy(logits_BTV[mask_BT], targets_BT[mask_BT])
    (grad_ce,) = torch.autograd.grad(ce, logits_BTV)
    assert loss.item() == pytest.approx(-1.0)  # the ratio pi / pi is 1 in value, times A = 1, negated
    assert torch.allclose(grad_preset, grad_ce, atol=1e-6)


def test_grpo_preset_gradient_is_the_clipped_ppo_surrogates():
    torch.manual_seed(1)
    logp_BT = (torch.randn(4, 6) * 0.3 - 1).requires_grad_()
    old_BT = logp_BT.detach() + torch.randn(4, 6) * 0.3  # ratios on both sides of the clip range
    mask_BT = torch.rand(4, 6) > 0.2
    reward_B, group_B = torch.tensor([1.0, 0.0, 0.5, 1.0]), torch.tensor([0, 0, 1, 1])
    adv_B = GroupNormalized()(reward_B, group_B)
    loss, metrics = grpo_preset(eps_low=0.2, eps_high=0.28)(logp_BT, mask_BT, adv_B=adv_B, old_logp_BT=old_BT)
    (grad,) = torch.autograd.grad(loss, logp_BT)

    ratio = torch.exp(logp_BT - old_BT)
    A = adv_B[:, None]
    per_token = -torch.min(ratio * A, ratio.clamp(0.8, 1.28) * A)
    reference = ((per_token * mask_BT).sum(-1) / mask_BT.sum(-1)).mean()
    (grad_reference,) = torch.autograd.grad(reference, logp_BT)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(grad, grad_reference, atol=1e-6)
    assert 0 < metrics["clip_fraction"] < 1


def test_denominators():
    logp_BT = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    # One: the term is pi itself, gradient pi * grad log pi
    loss, _ = PolicyGradientLoss(One(), Constant(), NoMask(), TokenMean())(logp_BT, torch.ones(1, 2), adv_B=torch.ones(1))
    (grad,) = torch.autograd.grad(loss, logp_BT)
    assert torch.allclose(grad, -torch.exp(logp_BT.detach()) / 2)
    # Current: value 1 per token, gradient of log pi
    loss, _ = PolicyGradientLoss(Current(), Constant(), NoMask(), TokenMean())(logp_BT, torch.ones(1, 2), adv_B=torch.ones(1))
    (grad,) = torch.autograd.grad(loss, logp_BT)
    assert loss.item() == -1.0 and torch.allclose(grad, torch.full((1, 2), -0.5))


def test_per_token_advantages_and_argument_checks():
    logp_BT = torch.zeros(1, 2, requires_grad=True)
    loss, _ = PolicyGradientLoss(Current(), Constant(), NoMask(), TokenMean())(
        logp_BT, torch.ones(1, 2), adv_BT=torch.tensor([[2.0, -1.0]])
    )
    assert loss.item() == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="exactly one"):
        PolicyGradientLoss()(logp_BT, torch.ones(1, 2))
    with pytest.raises(ValueError, match="kl_coef"):
        PolicyGradientLoss(kl_coef=-1.0)


# The trainer's old probabilities of three sampled tokens and the sampler's: ratios 2, 0.5 and 9.
OLD_P = torch.tensor([[0.5, 0.2, 0.9]])
SAMPLER_P = torch.tensor([[0.25, 0.4, 0.1]])


def test_truncated_is_weights_are_the_ratio_capped_hand_computed():
    weight_BT = TruncatedIS(cap=3.0)(OLD_P.log(), SAMPLER_P.log(), torch.ones(1, 3))
    assert torch.allclose(weight_BT, torch.tensor([[2.0, 0.5, 3.0]]))
    with pytest.raises(ValueError, match="cap must be > 0"):
        TruncatedIS(cap=0.0)


def test_masked_and_sequence_level_corrections_hand_computed():
    """Token ratios 2, 0.5 and 9: their product is 9; without the third token (masked out) it is 1."""
    every_BT, two_BT = torch.ones(1, 3), torch.tensor([[1.0, 1.0, 0.0]])
    old, sampler = OLD_P.log(), SAMPLER_P.log()
    assert torch.allclose(MaskedIS(cap=3.0)(old, sampler, every_BT), torch.tensor([[2.0, 0.5, 0.0]]))
    assert torch.allclose(SequenceTruncatedIS(cap=3.0)(old, sampler, every_BT), torch.full((1, 3), 3.0))
    assert torch.allclose(SequenceTruncatedIS(cap=10.0)(old, sampler, every_BT), torch.full((1, 3), 9.0))
    assert torch.equal(SequenceMaskedIS(cap=3.0)(old, sampler, every_BT), torch.zeros(1, 3))
    assert torch.allclose(SequenceMaskedIS(cap=10.0)(old, sampler, every_BT), torch.full((1, 3), 9.0))
    assert torch.allclose(SequenceMaskedIS(cap=3.0)(old, sampler, two_BT), torch.ones(1, 3))
    # Two sequences: each takes its own product.
    old2, sampler2 = torch.cat([old, sampler]), torch.cat([sampler, sampler])
    assert torch.allclose(SequenceTruncatedIS(cap=100.0)(old2, sampler2, torch.ones(2, 3)), torch.tensor([[9.0] * 3, [1.0] * 3]))
    # In the loss: a dropped sequence adds nothing, and the metric is the mean weight.
    logp_BT = old2.clone().requires_grad_()
    loss_fn = PolicyGradientLoss(Old(), Constant(1.0), NoMask(), TokenMean(), sampler_correction=SequenceMaskedIS(cap=3.0))
    loss, metrics = loss_fn(logp_BT, torch.ones(2, 3), adv_B=torch.ones(2), old_logp_BT=old2, sampler_logp_BT=sampler2)
    assert loss.item() == pytest.approx(-3 / 6)  # ratio 1 x weight 1 on the second row's 3 tokens, over 6
    assert metrics["sampler_weight"].item() == pytest.approx(0.5)


def test_truncated_is_weighs_each_tokens_term_and_its_gradient():
    # pi = pi_old (one step per batch): ratio 1, advantage 1, so each token's loss is -w and its
    # gradient with respect to logp is -w / 3 (token mean over 3 tokens).
    logp_BT = OLD_P.log().clone().requires_grad_(True)
    loss_fn = PolicyGradientLoss(Old(), Constant(1.0), NoMask(), TokenMean(), sampler_correction=TruncatedIS(cap=3.0))
    mask_BT = torch.ones(1, 3, dtype=torch.bool)
    loss, metrics = loss_fn(logp_BT, mask_BT, adv_B=torch.ones(1), old_logp_BT=OLD_P.log(), sampler_logp_BT=SAMPLER_P.log())
    assert loss.item() == pytest.approx(-(2.0 + 0.5 + 3.0) / 3)
    loss.backward()
    assert torch.allclose(logp_BT.grad, -torch.tensor([[2.0, 0.5, 3.0]]) / 3)
    assert metrics["sampler_weight"].item() == pytest.approx(5.5 / 3)
    # Without the sampler's log-probs there is nothing to weigh against: an error, not weight 1.
    with pytest.raises(ValueError, match="sampler correction needs"):
        loss_fn(logp_BT, mask_BT, adv_B=torch.ones(1), old_logp_BT=OLD_P.log())


def test_sampler_mismatch_hand_computed_on_the_masked_tokens():
    mask_BT = torch.tensor([[True, True, False]])  # the third token (ratio 9) is not a completion token
    metrics = sampler_mismatch(OLD_P.log(), SAMPLER_P.log(), mask_BT)
    assert metrics["sampler_abs_diff"].item() == pytest.approx((math.log(2) + math.log(2)) / 2)
    # k3 with r = trainer / sampler: r - log r - 1, for r = 2 and r = 0.5.
    assert metrics["sampler_kl"].item() == pytest.approx(((2 - math.log(2) - 1) + (0.5 + math.log(2) - 1)) / 2)
    same = sampler_mismatch(OLD_P.log(), OLD_P.log(), mask_BT)
    assert same["sampler_abs_diff"].item() == 0 and same["sampler_kl"].item() == 0


def test_clip_fractions_say_which_side_was_clipped():
    """Ratios 0.5, 0.5, 2, 2 (eps 0.2): A = -1 at 0.5 and A = +1 at 2 are clipped, below and above;
    A = +1 at 0.5 and A = -1 at 2 keep their gradient."""
    logp_BT = torch.zeros(4, 1)
    old_BT = torch.log(torch.tensor([[2.0], [2.0], [0.5], [0.5]]))
    adv_B = torch.tensor([-1.0, 1.0, 1.0, -1.0])
    _, metrics = grpo_preset()(logp_BT, torch.ones(4, 1), adv_B=adv_B, old_logp_BT=old_BT)
    assert [metrics[k].item() for k in ("clip_fraction", "clip_fraction_low", "clip_fraction_high")] == [0.5, 0.25, 0.25]
