import math

import pytest
import torch

from lit_posttrain.logprobs import forward_logits
from lit_posttrain.methods.cost import StepCost
from lit_posttrain.methods.grpo import GRPO
from lit_posttrain.methods.opd import OPD
from lit_posttrain.methods.sft import SFT
from lit_posttrain.models import LoRA
from lit_posttrain.optim import lr_multiplier


def _module(method=SFT, **kwargs):
    module = method(model="tiny-random-llama", dtype="float32", **kwargs)
    module.configure_model()
    return module


TOKENS_BT = torch.tensor([[5, 20, 21, 22, 23], [5, 30, 31, 32, 33]])
ATTENTION_BT = torch.ones_like(TOKENS_BT)


def _perturb(module: SFT) -> None:
    with torch.no_grad():
        for p in module.policy.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize("lora", [None, LoRA(r=4)])
def test_reference_is_the_starting_model(lora):
    module = _module(lora=lora)
    start_BT = module.policy_logp(TOKENS_BT, ATTENTION_BT).detach()
    assert torch.allclose(module.reference_logp(TOKENS_BT, ATTENTION_BT), start_BT, atol=1e-6)
    _perturb(module)
    assert not torch.allclose(module.policy_logp(TOKENS_BT, ATTENTION_BT), start_BT, atol=1e-3)
    assert torch.allclose(module.reference_logp(TOKENS_BT, ATTENTION_BT), start_BT, atol=1e-6)
    # The frozen copy is neither a child module (checkpointed) nor trainable.
    assert all("_reference" not in name for name, _ in module.named_parameters())


def test_a_teacher_given_to_a_method_that_does_not_use_one_is_refused():
    with pytest.raises(ValueError, match=r"SFT does not use a teacher, but `teacher: tiny-random-llama:1` is set: remove it"):
        SFT(model="tiny-random-llama", teacher="tiny-random-llama:1")


def test_teacher_is_frozen_and_scores_the_same_tokens(tiny_model_dir):
    module = _module(OPD, teacher=tiny_model_dir)
    assert not any(p.requires_grad for p in module.teacher.parameters())
    logp_BT = module.teacher_logp(TOKENS_BT, ATTENTION_BT)
    assert logp_BT.shape == TOKENS_BT.shape and not logp_BT.requires_grad
    assert torch.allclose(logp_BT, module.policy_logp(TOKENS_BT, ATTENTION_BT), atol=1e-6)
    # Not checkpointed: a frozen model is reloaded from its source, not stored in every checkpoint.
    assert not any("teacher" in name for name in module.state_dict())


def test_teacher_scores_a_rollout_with_shared_prompts_as_in_full(tiny_model_dir):
    from lit_posttrain.rollout import HFEngine

    module = _module(OPD, teacher="tiny-random-llama:1")
    engine = HFEngine(max_new_tokens=5, temperature=0.7)
    engine.setup(module.policy, module.tokenizer)
    rollout = engine.generate([[5, 20, 21], [5, 30, 31, 32, 33]], n=3, seed=0)
    full_BT = module.teacher_logp(rollout.tokens_BT, rollout.attention_BT, 0.7, rollout.prompt_width)
    shared_BT = module.teacher_rollout_logp(rollout)
    assert torch.allclose(shared_BT, torch.where(rollout.mask_BT, full_BT, 0.0), atol=1e-5)
    assert not torch.allclose(shared_BT, module.rollout_logp(rollout).detach(), atol=1e-3), "the teacher, not the policy"


def test_token_logp_matches_a_manual_log_softmax_and_ignores_left_padding():
    module = _module()
    logp_BT = module.policy_logp(TOKENS_BT, ATTENTION_BT)
    logits_BTV = module.policy(TOKENS_BT).logits
    manual = torch.log_softmax(logits_BTV[0, 1], -1)[TOKENS_BT[0, 2]]  # p(token 2 | tokens 0..1)
    assert math.isclose(logp_BT[0, 2].item(), manual.item(), rel_tol=1e-5)
    assert (logp_BT[:, 0] == 0).all()
    pad = module.tokenizer.pad_token_id
    padded_BT = torch.cat([torch.full((2, 3), pad), TOKENS_BT], dim=1)
    attention_BT = torch.cat([torch.zeros(2, 3, dtype=torch.long), ATTENTION_BT], dim=1)
    assert torch.allclose(module.policy_logp(padded_BT, attention_BT)[:, 4:], logp_BT[:, 1:], atol=1e-5)


def test_learning_rate_schedule_hand_computed():
    assert lr_multiplier(0, warmup_steps=4, total_steps=10, decay="constant", min_lr_ratio=0.0) == 0.25
    assert lr_multiplier(3, 4, 10, "constant", 0.0) == 1.0
    assert lr_multiplier(7, 4, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(7, 4, 10, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(10, 4, 10, "cosine", 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("lora", [None, LoRA(r=4)])
def test_shared_prompt_logp_equals_the_full_forward_and_its_gradient(lora):
    from lit_posttrain.rollout import HFEngine

    torch.manual_seed(0)
    module = _module(GRPO, lora=lora)
    _perturb(module)
    engine = HFEngine(max_new_tokens=6, temperature=0.8)
    engine.setup(module.policy, module.tokenizer)
    rollout = engine.generate([[5, 20, 21], [5, 30, 31, 32, 33], [5, 40]], n=3, seed=0)
    rows = torch.tensor([True, False, True, True, True, False, False, False, True])

    rollout = rollout.select(rows.nonzero().squeeze(-1).tolist())  # a group's rows partly selected, one group whole
    shared_BT = module.rollout_logp(rollout)
    full_BT = module.policy_logp(rollout.tokens_BT, rollout.attention_BT, temperature=0.8)
    full_BT = torch.where(rollout.mask_BT, full_BT, 0.0)
    assert shared_BT.shape == rollout.tokens_BT.shape
    assert torch.allclose(shared_BT, full_BT, atol=1e-5)

    weights_BT = torch.randn(shared_BT.shape)
    trainable = [p for p in module.policy.parameters() if p.requires_grad]
    grads_shared = torch.autograd.grad((shared_BT * weights_BT).sum(), trainable)
    grads_full = torch.autograd.grad((full_BT * weights_BT).sum(), trainable)
    for a, b in zip(grads_shared, grads_full, strict=True):
        # fp32 sums in another order: measured up to 2e-5 relative (it depends on the kernels the
        # CPU picks); a wrong cache or position shifts the gradient by far more than 1e-4.
        assert (a - b).norm() <= 1e-4 * b.norm(), ((a - b).norm(), b.norm())


def test_scoring_from_a_later_position_gives_the_same_log_probs():
    module = _module()
    full_BT = module.policy_logp(TOKENS_BT, ATTENTION_BT)
    late_BT = module.policy_logp(TOKENS_BT, ATTENTION_BT, first_scored=3)
    assert torch.allclose(late_BT[:, 3:], full_BT[:, 3:], atol=1e-6)
    assert (late_BT[:, :3] == 0).all()
    logits_BKV = forward_logits(module.policy, TOKENS_BT, ATTENTION_BT, keep_last=2)
    assert logits_BKV.shape == (2, 2, module.policy.config.vocab_size)
    assert torch.allclose(logits_BKV, forward_logits(module.policy, TOKENS_BT, ATTENTION_BT)[:, -2:], atol=1e-6)


def test_step_cost_times_its_phases_from_the_marks_and_starts_again_from_zero():
    now = [0.0]
    cost = StepCost(("trained",), ("generate_s", "loss_forward_s", "backward_step_s"), owner="M", clock=lambda: now[0])
    cost.add("tokens/trained", torch.tensor(7))
    cost.add("time/generate_s", 0.5)  # charged before the step's start mark (sampling by a callback)
    for name, t in [("start", 1.0), ("backward", 1.25), ("end", 2.0)]:
        now[0] = t
        cost.mark(name)
    now[0] = 3.0
    assert cost.finish() == {
        "tokens/trained": 7.0,
        "time/generate_s": 0.5,
        "time/loss_forward_s": 0.25,
        "time/backward_step_s": 0.75,
    }
    # Micro-batches alternate the phases; sampling between two "start" marks is in neither.
    for name, t in [("start", 10.0), ("start", 11.0), ("backward", 11.5), ("start", 12.5), ("backward", 12.75), ("end", 14.0)]:
        now[0] = t
        cost.mark(name)
    totals = cost.finish()
    assert (totals["time/loss_forward_s"], totals["time/backward_step_s"]) == (0.75, 2.25)
    # A step that returned no loss has no backward mark: everything since its start is the forward.
    now[0] = 4.0
    cost.mark("start")
    now[0] = 4.5
    assert cost.finish() == {"tokens/trained": 0.0, "time/generate_s": 0.0, "time/loss_forward_s": 0.5, "time/backward_step_s": 0.0}
    with pytest.raises(KeyError, match="M does not log 'tokens/teacher'"):
        cost.add("tokens/teacher", 1)
    with pytest.raises(ValueError, match="lacks the marked phases"):
        StepCost(("trained",), ("generate_s",))
