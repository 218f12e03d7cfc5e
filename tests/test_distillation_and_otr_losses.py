import math

import pytest
import torch

from lit_posttrain.losses.distillation import generalized_jsd, reverse_kl_advantages
from lit_posttrain.losses.otr import otr_loss, otr_samples

STUDENT = torch.log(torch.tensor([[0.1, 0.9]]))
TEACHER = torch.log(torch.tensor([[0.9, 0.1]]))


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_end_points_are_the_two_kls(beta):
    # KL([0.1, 0.9] || [0.9, 0.1]) = 0.1 ln(1/9) + 0.9 ln 9 = 0.8 ln 9, in either direction here
    assert generalized_jsd(STUDENT, TEACHER, beta).item() == pytest.approx(0.8 * math.log(9), rel=1e-6)


def test_jsd_half_is_the_symmetric_jsd():
    # m = [0.5, 0.5]; KL([0.1, 0.9] || m) = 0.1 ln 0.2 + 0.9 ln 1.8, the same for the teacher
    expected = 0.1 * math.log(0.2) + 0.9 * math.log(1.8)
    assert generalized_jsd(STUDENT, TEACHER, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_jsd_is_zero_for_equal_distributions_and_its_beta_is_checked():
    logits = torch.randn(4, 7)
    for beta in (0.0, 0.3, 1.0):
        assert torch.allclose(generalized_jsd(logits, logits, beta), torch.zeros(4), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        generalized_jsd(logits, logits, 1.5)


def test_jsd_beta_one_gradient_is_the_reverse_kl_gradient():
    student = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5)
    (g_jsd,) = torch.autograd.grad(generalized_jsd(student, teacher, 1.0).sum(), student)
    p = torch.softmax(student, -1)
    kl = (p * (torch.log_softmax(student, -1) - torch.log_softmax(teacher, -1))).sum()
    (g_kl,) = torch.autograd.grad(kl, student)
    assert torch.allclose(g_jsd, g_kl, atol=1e-6)


def test_reverse_kl_advantages_hand_computed():
    logp_BT = torch.tensor([[-1.0, -2.0, -0.5, -9.0]])
    teacher_BT = torch.tensor([[-1.5, -1.0, -0.5, -1.0]])
    mask_BT = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    a = reverse_kl_advantages(logp_BT, teacher_BT, mask_BT)
    assert a.tolist() == [[-0.5, 1.0, 0.0, 0.0]]
    discounted = reverse_kl_advantages(logp_BT, teacher_BT, mask_BT, discount=0.5)
    # A_0 = -0.5 + 0.5 * 1.0 + 0.25 * 0 = 0.0; A_1 = 1.0 + 0.5 * 0 = 1.0; A_2 = 0
    assert torch.allclose(discounted, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert not reverse_kl_advantages(logp_BT.requires_grad_(), teacher_BT, mask_BT).requires_grad


def test_otr_loss_through_counts_hand_computed():
    logp_NV = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    samples_NK = torch.tensor([[0, 0, 1, 2]])  # counts: target 0 twice, token 1 once, token 2 once
    loss = otr_loss(logp_NV, samples_NK, torch.tensor([0]), wrong_reward=-0.1)
    expected = -(2 * 1.0 * math.log(0.5) + 1 * -0.1 * math.log(0.3) + 1 * -0.1 * math.log(0.2)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Counts through a V-wide vector give the same number.
    counts_V = torch.bincount(samples_NK[0], minlength=3).float()
    rewards_V = torch.tensor([1.0, -0.1, -0.1])
    assert loss.item() == pytest.approx((-(counts_V * rewards_V * logp_NV[0]).sum() / 4).item(), rel=1e-6)


def test_otr_with_beta_zero_and_all_hits_is_cross_entropy():
    logits_NV = torch.randn(5, 11, requires_grad=True)
    target_N = torch.randint(0, 11, (5,))
    samples_NK = target_N[:, None].expand(5, 8)
    loss = otr_loss(torch.log_softmax(logits_NV, -1), samples_NK, target_N, wrong_reward=0.0).mean()
    ce = torch.nn.functional.cross_entropy(logits_NV, target_N)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6)


def test_otr_samples_shape_distribution_and_forced_target():
    logits_NV = torch.log(torch.tensor([[0.7, 0.2, 0.1, 1e-9], [1e-9, 1e-9, 1e-9, 1.0]]))
    generator = torch.Generator().manual_seed(0)
    samples_NK = otr_samples(logits_NV, torch.tensor([0, 0]), k=4000, kappa=1.0, generator=generator)
    assert samples_NK.shape == (2, 4000)
    frequencies = torch.bincount(samples_NK[0], minlength=4).float() / 4000
    assert torch.allclose(frequencies, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.03)
    forced = otr_samples(logits_NV, torch.tensor([0, 0]), k=4, kappa=1.0, force_target=True, generator=generator)
    assert (forced == 0).any(-1).all()  # row 2 would almost surely miss token 0 without forcing
    # A higher kappa flattens the exploration distribution.
    hot = otr_samples(logits_NV[:1], torch.tensor([0]), k=4000, kappa=3.0, generator=generator)
    assert (hot == 0).float().mean() < 0.6
