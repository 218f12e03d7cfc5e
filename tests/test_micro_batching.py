"""Micro-batches: how a step's rows are packed, and that a step run a micro-batch at a time gives
the loss, gradient and metrics of one pass over every row, for every method and every part of the
loss that normalises, on rows of very different lengths."""

import pytest
import torch

from lit_posttrain.data.batches import Batch, Row
from lit_posttrain.data.task import Example
from lit_posttrain.losses.aggregation import ConstantLength, SequenceMean, TokenMean
from lit_posttrain.losses.importance import SequenceTruncatedIS, TruncatedIS
from lit_posttrain.losses.policy_gradient import PolicyGradientLoss
from lit_posttrain.methods.grpo import GRPO
from lit_posttrain.methods.hpt import HPT
from lit_posttrain.methods.opd import OPD, FullVocabJSD, SampledReverseKL
from lit_posttrain.methods.otr import OTR
from lit_posttrain.methods.sept import SePT
from lit_posttrain.methods.sft import SFT
from lit_posttrain.micro_batching import MicroBatching
from lit_posttrain.rollout import HFEngine, Rollout
from tests.helpers.steps import offline

# --- packing ------------------------------------------------------------------------------------


def test_rows_are_packed_longest_first_within_the_padded_budget():
    prompt_B = [3, 3, 5, 2, 4, 3]
    completion_B = [1, 11, 4, 9, 2, 6]  # totals 4, 14, 9, 11, 6, 9
    parts = MicroBatching(max_tokens=20).split(prompt_B, completion_B)
    # Longest first: row 1 (14) alone, as 14 + 11 padded to 2 x (5 + 11) > 20; then rows 3 and
    # 2 (2 x (5 + 9) > 20, so alone), then 5 + 4 (2 x (4 + 6) = 20) and 0 with them? 3 x (4 + 6) > 20.
    assert parts == [[1], [3], [2], [4, 5], [0]]
    for part in parts:
        padded = len(part) * (max(prompt_B[i] for i in part) + max(completion_B[i] for i in part))
        assert padded <= 20
    assert sorted(i for part in parts for i in part) == list(range(6))
    assert MicroBatching(max_tokens=None).split(prompt_B, completion_B) == [list(range(6))]
    by_rows = MicroBatching(max_tokens=None, max_rows=4).split(prompt_B, completion_B)
    assert [len(p) for p in by_rows] == [4, 2] and all(p == sorted(p) for p in by_rows)


def test_a_row_larger_than_the_budget_is_refused_with_its_size():
    with pytest.raises(ValueError, match=r"row 1 of this step has 3 prompt \+ 11 completion = 14 tokens, more than micro_batching.max_tokens = 12"):
        MicroBatching(max_tokens=12).split([3, 3], [1, 11])
    with pytest.raises(ValueError, match="max_rows must be at least 1"):
        MicroBatching(max_rows=0)


def test_a_training_prompt_that_cannot_fit_stops_the_run_at_start_up():
    rows = [Row(Example([{"role": "user", "content": "q"}], answer="1", source="mine.jsonl:row 7"), [5] * 9, None)]
    module = GRPO(model="tiny-random-llama", engine=HFEngine(max_new_tokens=8), micro_batching=MicroBatching(max_tokens=16))
    with pytest.raises(ValueError, match=r"mine.jsonl:row 7: its prompt of 9 tokens and a completion of up to 8 \(max_new_tokens 8\) make 17 tokens, more than micro_batching.max_tokens = 16: raise it to at least 17"):
        module.check_rows_fit(rows)
    GRPO(model="tiny-random-llama", engine=HFEngine(max_new_tokens=7), micro_batching=MicroBatching(max_tokens=16)).check_rows_fit(rows)


# --- a step in micro-batches equals the single pass ---------------------------------------------

PROMPTS = [[5, 20, 21], [5, 30, 31, 32, 33], [5, 40]]
COMPLETION_LENGTHS = [1, 11, 4, 9, 2, 6]  # two rows per prompt
DEMONSTRATIONS = [[7, 8, 3], [9, 10, 11, 12, 13, 14, 15, 16, 3], [10, 3]]


def _uneven_rollout(rewards: list[float]) -> Rollout:
    """Two completions per prompt of 1 to 11 tokens, left-padded prompts of 2 to 5; the sampler's
    log-probs are the starting policy's plus noise, so that sampler corrections do something."""
    generator = torch.Generator().manual_seed(0)
    width, longest = max(map(len, PROMPTS)), max(COMPLETION_LENGTHS)
    tokens_BT = torch.zeros(len(COMPLETION_LENGTHS), width + longest, dtype=torch.long)
    attention_BT = torch.zeros_like(tokens_BT)
    mask_BT = torch.zeros_like(tokens_BT, dtype=torch.bool)
    for b, length in enumerate(COMPLETION_LENGTHS):
        prompt = PROMPTS[b // 2]
        tokens_BT[b, width - len(prompt) : width] = torch.tensor(prompt)
        tokens_BT[b, width : width + length] = torch.randint(4, 99, (length,), generator=generator)
        attention_BT[b, width - len(prompt) : width + length] = 1
        mask_BT[b, width : width + length] = True
    rollout = Rollout(
        tokens_BT=tokens_BT, attention_BT=attention_BT, mask_BT=mask_BT, logp_BT=torch.zeros(mask_BT.shape),
        group_B=torch.arange(len(COMPLETION_LENGTHS)) // 2, truncated_B=torch.tensor(COMPLETION_LENGTHS) == longest,
        prompt_width=width, completions=[""] * len(COMPLETION_LENGTHS), reward_B=torch.tensor(rewards),
        age_B=torch.zeros(len(COMPLETION_LENGTHS), dtype=torch.long),
    )  # fmt: skip
    with torch.no_grad():
        logp_BT = offline(GRPO, rollout).rollout_logp(rollout)
    noise_BT = 0.05 * torch.randn(mask_BT.shape, generator=generator)
    return Rollout(**{**rollout.__dict__, "logp_BT": (logp_BT + noise_BT) * mask_BT})


REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, 0.0]
CASES = {
    "grpo sequence mean": (GRPO, {"loss": PolicyGradientLoss(aggregation=SequenceMean())}),
    "grpo token mean": (GRPO, {"loss": PolicyGradientLoss(aggregation=TokenMean())}),
    "grpo constant length": (GRPO, {"loss": PolicyGradientLoss(aggregation=ConstantLength(max_tokens=16))}),
    "grpo k3 kl": (GRPO, {"loss": PolicyGradientLoss(kl_coef=0.1)}),
    "grpo token is": (GRPO, {"loss": PolicyGradientLoss(aggregation=TokenMean(), sampler_correction=TruncatedIS(cap=1.02))}),
    "grpo sequence is": (GRPO, {"loss": PolicyGradientLoss(sampler_correction=SequenceTruncatedIS(cap=1.1))}),
    "sept": (SePT, {"start_temperature": 0.6}),
    "opd reverse kl": (OPD, {"teacher": "tiny-random-llama:1", "estimator": SampledReverseKL(discount=0.5)}),
    "opd jsd": (OPD, {"teacher": "tiny-random-llama:1", "estimator": FullVocabJSD(beta=0.5)}),
    "hpt": (HPT, {"gamma": 0.0}),  # prompt 0 half solved (RL), 1 half solved (RL), 2 unsolved (SFT)
}
BUDGETS = [MicroBatching(max_tokens=16), MicroBatching(max_tokens=None, max_rows=1), MicroBatching(max_tokens=40)]


@pytest.mark.parametrize("name", list(CASES))
def test_a_step_in_micro_batches_equals_the_single_pass(name):
    method, kwargs = CASES[name]
    rollout = _uneven_rollout(REWARDS)
    rows = [Row(Example([{"role": "user", "content": "q"}], answer="1"), p, d) for p, d in zip(PROMPTS, DEMONSTRATIONS, strict=True)]
    results = []
    for budget in [MicroBatching(max_tokens=None), *BUDGETS]:
        module = offline(method, rollout, micro_batching=budget, **kwargs)
        torch.manual_seed(0)  # the tiny model is built from a seed; the step itself draws nothing
        loss = module.training_step(Batch(rows), 0)
        grads = {n: p.grad.clone() for n, p in module.policy.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, {k: v.item() for k, v in module.logged.items()}))
    whole_loss, whole_grads, whole_metrics = results[0]
    assert whole_grads and any(g.abs().sum() > 0 for g in whole_grads.values())
    for loss, grads, metrics in results[1:]:
        assert loss == pytest.approx(whole_loss, rel=1e-5, abs=1e-7)
        assert grads.keys() == whole_grads.keys()
        for key, grad in grads.items():
            torch.testing.assert_close(grad, whole_grads[key], rtol=1e-4, atol=1e-6, msg=key)
        # Token means of every part, weighted by tokens, are the whole batch's token means.
        assert metrics == pytest.approx(whole_metrics, rel=1e-5, abs=1e-6)


DEMONSTRATION_ROWS = [
    Row(Example([{"role": "user", "content": "q"}], answer="1"), prompt, demonstration)
    for prompt, demonstration in zip(
        [[5, 20, 21], [5, 30, 31, 32, 33], [5, 40], [5, 50, 51, 52], [5, 60, 61]],
        [[7, 3], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 3], [10, 11, 12, 3], [19, 3], [20, 21, 22, 23, 24, 25, 3]],
        strict=True,
    )
]


@pytest.mark.parametrize("method, kwargs", [(SFT, {}), (OTR, {"k": 8}), (OTR, {"k": 8, "force_target": True})])
def test_a_demonstration_step_in_micro_batches_equals_the_single_pass(method, kwargs):
    """SFT's and OTR's step over rows of 2 to 11 demonstration tokens: the token mean over the whole
    step (and OTR's candidates, drawn per row) whatever the micro-batches."""
    results = []
    for budget in [MicroBatching(max_tokens=None), *BUDGETS]:
        torch.manual_seed(0)
        module = offline(method, micro_batching=budget, **kwargs)
        loss = module.training_step(Batch(DEMONSTRATION_ROWS), 0)
        grads = {n: p.grad.clone() for n, p in module.policy.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, {k: float(v) for k, v in module.logged.items()}))
    (whole_loss, whole_grads, whole_metrics), split = results[0], results[1:]
    assert whole_grads and any(g.abs().sum() > 0 for g in whole_grads.values())
    assert len(MicroBatching(max_tokens=16).split([3, 5, 2, 4, 3], [2, 11, 4, 2, 7])) >= 3
    for loss, grads, metrics in split:
        assert loss == pytest.approx(whole_loss, rel=1e-5, abs=1e-7)
        for key, grad in grads.items():
            torch.testing.assert_close(grad, whole_grads[key], rtol=1e-4, atol=1e-6, msg=key)
        assert metrics == pytest.approx(whole_metrics, rel=1e-5, abs=1e-6)
    if method is SFT:  # the loss is the token mean over all 26 demonstration tokens, by hand
        module = offline(SFT)
        with torch.no_grad():
            logp_BT, mask_BT = module.demonstration_logp(DEMONSTRATION_ROWS)
        assert mask_BT.sum() == 26 and whole_metrics["train/tokens"] == 26
        assert whole_loss == pytest.approx((-(logp_BT * mask_BT).sum() / 26).item(), rel=1e-5)


def test_a_demonstration_that_cannot_fit_stops_the_run_at_start_up():
    rows = [Row(Example([{"role": "user", "content": "q"}], answer="1", source="mine.jsonl:row 3"), [5] * 9, [7] * 8)]
    with pytest.raises(ValueError, match=r"mine.jsonl:row 3: its prompt of 9 tokens and a completion of up to 8 \(its demonstration\) make 17 tokens"):
        SFT(model="tiny-random-llama", micro_batching=MicroBatching(max_tokens=16)).check_rows_fit(rows)
    SFT(model="tiny-random-llama", micro_batching=MicroBatching(max_tokens=17)).check_rows_fit(rows)
