"""Several optimizer steps per rollout batch (`ppo_epochs` x `mini_batches`, methods/epochs.py) for
every on-policy method: each step's gradient is recomputed by hand from the method's loss on its
part of the batch, under the weights of that moment, with pi_old the weights before the batch's
first step. GRPO's own case is in test_method_steps.py; resuming mid-batch in test_resume.py."""

import pytest
import torch

from lit_posttrain.data.batches import Batch
from lit_posttrain.losses import token_mean_nll
from lit_posttrain.losses.aggregation import Counts
from lit_posttrain.methods.grpo import GRPO
from lit_posttrain.methods.hpt import HPT
from lit_posttrain.methods.opd import OPD, FullVocabJSD
from lit_posttrain.methods.sept import SePT
from tests.helpers.steps import offline, tiny_rollout

TEACHER = "tiny-random-llama:1"  # another seed's weights: the teacher's log-probs differ from the student's
SEPT = {"start_temperature": 0.6}


def _sgd_recorder():
    """An `on_step` that keeps the weights and the gradient at each optimizer step, then takes a
    plain SGD step large enough to move the policy's ratios well away from 1."""
    seen = []

    def step(module):
        params = dict(module.policy.named_parameters())
        seen.append(({n: t.clone() for n, t in module.policy.state_dict().items()}, {n: p.grad.clone() for n, p in params.items()}))
        with torch.no_grad():
            for p in params.values():
                p -= 2.0 * p.grad
                p.grad = None

    return seen, step


def _gradient(module, weights, loss_of, *args):
    """The gradient of `loss_of(module, *args)` with the module's policy set to `weights`."""
    module.policy.load_state_dict(weights)
    module.policy.zero_grad()
    loss_of(module, *args).backward()
    return {n: p.grad.clone() for n, p in module.policy.named_parameters()}


def _assert_same(expected, got, step):
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=f"step {step}: {name}")


@pytest.mark.parametrize(
    ("method", "kwargs", "pi_old"),
    [
        (GRPO, {}, True),
        (HPT, {}, True),
        (OPD, {"teacher": TEACHER}, True),
        (OPD, {"teacher": TEACHER, "estimator": FullVocabJSD()}, False),  # no ratio: no pi_old pass
        (SePT, SEPT, False),
    ],
)
def test_every_on_policy_method_takes_epochs_x_mini_batches_steps(method, kwargs, pi_old):
    rollout, rows = tiny_rollout([1, 0, 0, 1, 0.5, 0])
    seen, step = _sgd_recorder()
    module = offline(method, rollout, on_step=step, ppo_epochs=2, mini_batches=3, **kwargs)
    module.training_step(Batch(rows), 0)
    assert len(seen) == 6
    assert ("pi_old" in module.token_kinds) is pi_old
    plain = offline(method, rollout, **kwargs)
    assert "pi_old" not in plain.token_kinds  # one step per batch: pi_old is the current policy, no pass


def test_sept_steps_each_take_the_nll_of_their_own_rows():
    """SePT's loss has no ratio: each step is the token-mean NLL of its rows (divided by their own
    tokens) at the training temperature, under the weights of that moment."""
    rollout, rows = tiny_rollout([0] * 6)
    seen, step = _sgd_recorder()
    module = offline(SePT, rollout, on_step=step, ppo_epochs=2, mini_batches=2, **SEPT)
    module.training_step(Batch(rows), 0)
    reference = offline(SePT, rollout, **SEPT)

    def nll(m, part):
        return token_mean_nll(m.rollout_logp(part, temperature=1.0), part.mask_BT)[0]

    for k, (weights, grads) in enumerate(seen):
        _assert_same(_gradient(reference, weights, nll, rollout.select([0, 1, 2] if k % 2 == 0 else [3, 4, 5])), grads, k)


def test_opd_steps_divide_by_the_policy_before_the_first():
    """Sampled reverse KL through the policy-gradient loss (pi_old denominator, no clip, token
    mean): each step's gradient is the estimator's on its rows with pi_old the weights before the
    batch's first step; dividing by the current policy instead gives another gradient from the
    second step on (so the check can fail)."""
    rollout, rows = tiny_rollout([0] * 6)
    seen, step = _sgd_recorder()
    module = offline(OPD, rollout, on_step=step, ppo_epochs=2, mini_batches=2, teacher=TEACHER)
    module.training_step(Batch(rows), 0)
    reference = offline(OPD, rollout, teacher=TEACHER)
    parts = [rollout.select([0, 1, 2]), rollout.select([3, 4, 5])]
    reference.policy.load_state_dict(seen[0][0])
    with torch.no_grad():
        old = [reference.rollout_logp(part) for part in parts]

    def estimator_loss(m, part, old_logp_BT):
        logp_BT = m.rollout_logp(part)
        old_logp_BT = logp_BT.detach() if old_logp_BT is None else old_logp_BT
        counts = Counts(rows=len(part), tokens=float(part.mask_BT.sum()))
        return m.estimator(logp_BT, m.teacher_rollout_logp(part), part.mask_BT, old_logp_BT=old_logp_BT, sampler_logp_BT=part.logp_BT, counts=counts)[0]

    differs = []
    for k, (weights, grads) in enumerate(seen):
        part, old_logp_BT = parts[k % 2], old[k % 2]
        _assert_same(_gradient(reference, weights, estimator_loss, part, old_logp_BT), grads, k)
        current = _gradient(reference, weights, estimator_loss, part, None)  # pi_old: the current policy
        differs.append(max((current[n] - grads[n]).abs().max().item() for n in grads))
    assert differs[0] < 1e-6  # the first step's pi_old is the current policy
    assert min(differs[1:]) > 1e-4, "later steps' ratios are 1: pi_old is not the policy before the first step"


def test_hpt_splits_between_whole_prompts_and_takes_pi_old_of_its_rl_rows_only():
    """Prompts 0 and 2 unsolved (SFT), prompt 1 half solved (RL); two mini-batches of whole prompts:
    {0, 1} and {2}. Step one: (L_sft(prompt 0) + L_rl(prompt 1)) / 2, the RL side's ratio to pi_old;
    step two: prompt 2's SFT alone. pi_old's pass runs over prompt 1's rows only."""
    rollout, rows = tiny_rollout([0, 0, 1, 0, 0, 0])
    seen, step = _sgd_recorder()
    module = offline(HPT, rollout, on_step=step, ppo_epochs=2, mini_batches=2, skip_zero_advantage=False)
    pi_old_rows = []
    trained_logp = module.rollout_logp

    def spy(part, temperature=None, kind="trained"):
        if kind == "pi_old":
            pi_old_rows.append(len(part))
        return trained_logp(part, temperature, kind)

    module.rollout_logp = spy
    module.training_step(Batch(rows), 0)
    assert pi_old_rows == [2]
    assert module.logged["sft_fraction"].item() == pytest.approx(2 / 3)  # the batch's, not a mean of the parts'

    reference = offline(HPT, rollout)
    rl = rollout.select([2, 3])
    reference.policy.load_state_dict(seen[0][0])
    with torch.no_grad():
        old_logp_BT = reference.rollout_logp(rl)
    adv_B = reference.loss.advantage(rl.reward_B, rl.group_B)

    def first_part(m):
        sft = token_mean_nll(*m.demonstration_logp([rows[0]]))[0]
        rl_loss = m.loss(m.rollout_logp(rl), rl.mask_BT, adv_B=adv_B, old_logp_BT=old_logp_BT)[0]
        return (sft + rl_loss) / 2

    def second_part(m):
        return token_mean_nll(*m.demonstration_logp([rows[2]]))[0]

    for k, (weights, grads) in enumerate(seen):
        _assert_same(_gradient(reference, weights, first_part if k % 2 == 0 else second_part), grads, k)


def test_hpt_refuses_more_mini_batches_than_prompts():
    module = HPT(model="tiny-random-llama", group_size=2, mini_batches=3)
    data = type("Data", (), {"train_rows": [None] * 4, "batch_size": 2})()
    module._trainer = type("T", (), {"max_steps": 3, "callbacks": [], "datamodule": data, "world_size": 1})()
    with pytest.raises(ValueError, match="mini_batches 3 is more than the 2 prompts of the smallest batch"):
        module.check_step_counts()
