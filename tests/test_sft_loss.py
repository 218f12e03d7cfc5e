import math

import torch

from lit_posttrain.losses import token_mean_nll


def test_token_mean_nll_hand_computed():
    logp_BT = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, -3.0]])
    mask_BT = torch.tensor([[0, 1, 1], [0, 1, 0]])  # -3.0 is padding: it must not count
    loss, metrics = token_mean_nll(logp_BT, mask_BT)
    assert math.isclose(loss.item(), (1.0 + 2.0 + 0.5) / 3, rel_tol=1e-6)
    assert metrics["tokens"].item() == 3
    assert math.isclose(metrics["nll_sum"].item(), 3.5)


def test_token_mean_nll_explicit_denominator():
    logp_BT = torch.tensor([[-1.0, -2.0]])
    loss, metrics = token_mean_nll(logp_BT, torch.ones(1, 2), num_tokens=6)
    assert math.isclose(loss.item(), 3.0 / 6)
    assert math.isclose(metrics["nll"].item(), 1.5)  # the batch's own mean is still reported


def test_token_mean_nll_empty_mask_is_finite():
    loss, _ = token_mean_nll(torch.zeros(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0


def test_micro_batches_divided_by_the_steps_tokens_give_its_token_mean():
    # Two micro-batches with 1 and 3 completion tokens. A mean of per-micro-batch means would give
    # (1/1 + 6/3) / 2 = 1.5; the token mean of the whole step is (1 + 6) / 4 = 1.75.
    logp_a = torch.tensor([[-1.0, 0.0, 0.0]], requires_grad=True)
    logp_b = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    mask_a, mask_b = torch.tensor([[1, 0, 0]]), torch.tensor([[1, 1, 1]])
    total = 0.0
    for logp, mask in ((logp_a, mask_a), (logp_b, mask_b)):
        loss, _ = token_mean_nll(logp, mask, num_tokens=4)
        loss.backward()
        total += loss.item()
    assert math.isclose(total, 1.75)
    # Every token gets the same gradient weight, -1/4, whichever micro-batch it came from.
    assert torch.allclose(logp_a.grad, torch.tensor([[-0.25, 0.0, 0.0]]))
    assert torch.allclose(logp_b.grad, torch.full((1, 3), -0.25))
