"""One training step of a method, against values computed by hand from its parts: the step is fed
a prepared rollout through its rollout source (the one place its rollouts come from) and run outside a
Trainer, so each claim about the step is checked on known numbers."""

import math

import pytest
import torch

from lit_posttrain.data.batches import Batch
from lit_posttrain.losses import token_mean_nll
from lit_posttrain.losses.advantages import Constant
from lit_posttrain.losses.aggregation import ConstantLength, TokenMean
from lit_posttrain.losses.importance import TruncatedIS
from lit_posttrain.losses.policy_gradient import NoMask, Old, PolicyGradientLoss
from lit_posttrain.methods.grpo import GRPO
from lit_posttrain.methods.hpt import HPT
from lit_posttrain.rollout import HFEngine, Rollout
from tests.helpers.steps import offline as _offline
from tests.helpers.steps import tiny_rollout as _rollout


def test_hpt_weighs_each_side_by_its_prompts():
    """Prompts 0 and 2 unsolved (SFT on their demonstrations), prompt 1 half solved (RL):
    L = (2 * L_sft + 1 * L_rl) / 3, L_sft the token mean over both demonstrations."""
    rollout, rows = _rollout([0, 0, 1, 0, 0, 0])
    hpt = _offline(HPT, rollout, gamma=0.0)
    loss = hpt.training_step(Batch(rows), 0)

    reference = _offline(GRPO, rollout)
    reference.policy.load_state_dict(hpt.policy.state_dict())
    logp_BT, mask_BT = reference.demonstration_logp([rows[0], rows[2]])
    sft_loss, _ = token_mean_nll(logp_BT, mask_BT)
    rl_loss, _, _ = reference.policy_gradient_backward(rollout.select([2, 3]), reference.loss)
    assert loss.item() == pytest.approx((2 * sft_loss.item() + rl_loss.item()) / 3, rel=1e-5)
    assert hpt.logged["sft_fraction"].item() == pytest.approx(2 / 3)


def test_skipping_zero_advantage_rows_leaves_the_gradient_unchanged():
    """Groups 0 and 2 have equal rewards (advantage 0): skipping their forward pass gives the same
    loss and gradient as computing every row."""
    rollout, rows = _rollout([1, 1, 1, 0, 0, 0])
    grads = {}
    for skip in (True, False):
        module = _offline(GRPO, rollout, skip_zero_advantage=skip)
        torch.manual_seed(0)
        loss = module.training_step(Batch(rows), 0)
        grads[skip] = (loss.item(), {n: p.grad.clone() for n, p in module.policy.named_parameters()})
    assert grads[True][0] == pytest.approx(grads[False][0], abs=1e-7)
    for name, grad in grads[False][1].items():
        assert torch.allclose(grads[True][1][name], grad, atol=1e-6), name
    assert any(g.abs().sum() > 0 for g in grads[False][1].values()), "group 1 has a gradient"


def test_the_sampler_weight_is_measured_on_the_trained_rows_only():
    """HFEngine in float32 samples with the trainer's numerics: every trained token's weight is 1.
    The skipped rows (groups 0 and 2, equal rewards) once took log-probs 0 as pi_old, so their
    weights hit the cap and inflated `sampler_weight` though the loss did not use them."""
    rollout, rows = _rollout([1, 1, 1, 0, 0, 0])
    loss = PolicyGradientLoss(sampler_correction=TruncatedIS(cap=2.0))
    module = _offline(GRPO, rollout, loss=loss)
    module.training_step(Batch(rows), 0)
    assert module.logged["sampler_weight"].item() == pytest.approx(1.0, abs=1e-4)


def test_constant_length_normalises_by_the_samplers_budget():
    """Dr. GRPO divides by the completion budget: with no `max_tokens` given it is the engine's
    `max_new_tokens` (4 here), not a fixed 64."""
    rollout, rows = _rollout([1, 0, 1, 0, 0, 1])
    module = _offline(GRPO, rollout, loss=PolicyGradientLoss(aggregation=ConstantLength()), engine=HFEngine(max_new_tokens=4))
    assert module.loss.aggregation.max_tokens == 4
    budget = module.training_step(Batch(rows), 0)
    explicit = _offline(GRPO, rollout, loss=PolicyGradientLoss(aggregation=ConstantLength(max_tokens=8)))
    explicit.policy.load_state_dict(module.policy.state_dict())
    assert explicit.training_step(Batch(rows), 0).item() == pytest.approx(budget.item() / 2, rel=1e-6)


def test_a_reused_row_divides_by_its_stored_sampler_log_probs():
    """With advantage 1, no clip and a token mean, the loss is minus the mean ratio: 1 on fresh
    rows (pi_old is the current policy) and exp(0.1) on the reused rows, whose stored log-probs
    are set 0.1 below the policy's."""
    rollout, rows = _rollout([0, 1, 0, 1, 0, 1], age=[0, 0, 1, 1, 0, 0])
    loss_part = PolicyGradientLoss(Old(), Constant(1.0), NoMask(), TokenMean())
    probe = _offline(GRPO, rollout, loss=loss_part)
    with torch.no_grad():
        current_BT = probe.rollout_logp(rollout)
    reused_B = rollout.age_B > 0
    stored_BT = torch.where(reused_B[:, None] & rollout.mask_BT, current_BT - 0.1, rollout.logp_BT)
    rollout = Rollout(**{**rollout.__dict__, "logp_BT": stored_BT})
    module = _offline(GRPO, rollout, loss=loss_part)
    module.policy.load_state_dict(probe.policy.state_dict())
    loss = module.training_step(Batch(rows), 0)
    tokens_B = rollout.mask_BT.sum(-1).float()
    expected = -(tokens_B[~reused_B].sum() + math.exp(0.1) * tokens_B[reused_B].sum()) / tokens_B.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_one_epoch_of_one_mini_batch_is_the_step_with_pi_old_the_current_policy():
    rollout, rows = _rollout([1, 0, 0, 1, 0.5, 0])
    module = _offline(GRPO, rollout, ppo_epochs=1, mini_batches=1)
    loss = module.training_step(Batch(rows), 0)
    assert "pi_old" not in module.token_kinds  # no extra forward pass
    reference = _offline(GRPO, rollout)
    reference.policy.load_state_dict(module.policy.state_dict())
    logp_BT = reference.rollout_logp(rollout)
    expected, _ = reference.loss(logp_BT, rollout.mask_BT, adv_B=reference.loss.advantage(rollout.reward_B, rollout.group_B), old_logp_BT=logp_BT.detach())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_each_step_on_a_batch_divides_by_the_policy_before_the_first():
    """Two epochs of two mini-batches, plain SGD at a learning rate that moves the ratios past the
    clip: the gradient of every one of the four steps is the clipped loss of its rows under the
    weights of that moment, divided by the log-probs of the weights before the first step (pi_old),
    with the advantages of the whole batch and its own rows' counts."""
    rollout, rows = _rollout([1, 0, 0, 1, 0.5, 0])
    seen = []  # (weights, gradient) at each optimizer step

    def sgd(module):
        params = dict(module.policy.named_parameters())
        weights = {n: t.clone() for n, t in module.policy.state_dict().items()}
        seen.append((weights, {n: p.grad.clone() for n, p in params.items()}))
        with torch.no_grad():
            for p in params.values():
                p -= 2.0 * p.grad
                p.grad = None

    module = _offline(GRPO, rollout, on_step=sgd, ppo_epochs=2, mini_batches=2, skip_zero_advantage=False)
    module.training_step(Batch(rows), 0)
    assert len(seen) == 4
    reference = _offline(GRPO, rollout)
    reference.policy.load_state_dict(seen[0][0])
    with torch.no_grad():
        old_logp_BT = reference.rollout_logp(rollout)
    adv_B = reference.loss.advantage(rollout.reward_B, rollout.group_B)
    clipped = []
    for step, (weights, grads) in enumerate(seen):
        index = [0, 1, 2] if step % 2 == 0 else [3, 4, 5]
        part = rollout.select(index)
        reference.policy.load_state_dict(weights)
        reference.policy.zero_grad()
        logp_BT = reference.rollout_logp(part)
        loss, metrics = reference.loss(logp_BT, part.mask_BT, adv_B=adv_B[index], old_logp_BT=old_logp_BT[index][:, : part.mask_BT.shape[1]])
        loss.backward()
        clipped.append(metrics["clip_fraction"].item())
        for name, p in reference.policy.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"step {step}: {name}")
    assert clipped[0] == 0.0  # the first step's ratios are all 1
    assert max(clipped[2:]) > 0, "the second epoch's ratios left the clip range: pi_old is not the current policy"
