"""The output head in chunks (lit_posttrain.head) against the full-logits computation it replaces:
values and gradients in float32, on hand-made tensors and through the model's forward passes."""

import math

import pytest
import torch

from lit_posttrain import head as head_module
from lit_posttrain.head import head_logp, plain_head
from lit_posttrain.logprobs import shared_prompt_logp, token_logp
from lit_posttrain.models import LoRA, apply_lora, load_model, resolve_model_source
from lit_posttrain.rollout import HFEngine


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("positions_a_chunk", [3, 100], ids=["chunks_recomputed", "one_chunk_kept"])
@pytest.mark.parametrize("frozen", [False, True], ids=["trained_head", "frozen_head"])
def test_chunked_head_equals_the_full_log_softmax(monkeypatch, bias, temperature, positions_a_chunk, frozen):
    """A frozen head (LoRA's) makes the hidden states' gradient in the forward: the same values."""
    monkeypatch.setattr(head_module, "HEAD_CHUNK_BYTES", positions_a_chunk * 4 * 7)  # a 7-token vocabulary
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 7, bias=bias).requires_grad_(not frozen)
    hidden_NH = torch.randn(10, 5, requires_grad=True)
    target_N = torch.randint(0, 7, (10,))
    weights_N = torch.randn(10)  # an arbitrary upstream gradient

    logp_N = head_logp(hidden_NH, linear, target_N, temperature)
    full_N = torch.log_softmax(linear(hidden_NH) / temperature, -1).gather(-1, target_N[:, None]).squeeze(-1)
    assert logp_N.shape == (10,) and logp_N.dtype == torch.float32
    assert torch.allclose(logp_N, full_N, atol=1e-6)
    params = [hidden_NH] if frozen else [hidden_NH, *linear.parameters()]
    heads_run, real_logits = [], head_module._logits
    monkeypatch.setattr(head_module, "_logits", lambda *a: heads_run.append(1) or real_logits(*a))
    grads = torch.autograd.grad((logp_N * weights_N).sum(), params, retain_graph=True)
    # The head runs again in the backward only for a trained head over several chunks.
    assert len(heads_run) == (4 if positions_a_chunk == 3 and not frozen else 0)
    again = torch.autograd.grad((logp_N * weights_N).sum(), params)  # a second backward recomputes
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, again, strict=True))
    expected = torch.autograd.grad((full_N * weights_N).sum(), params)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("frozen", [False, True], ids=["trained_head", "frozen_head"])
def test_a_trained_head_s_chunks_take_half_as_many_positions_as_it_has_inputs(monkeypatch, frozen):
    """Each chunk of a trained head adds a weight-sized product into the weight's gradient, so its
    chunks are not smaller than half its inputs in positions, whatever the byte budget says; the
    values and gradients stay the full path's."""
    monkeypatch.setattr(head_module, "HEAD_CHUNK_BYTES", 1 * 4 * 7)  # 1 position a chunk (vocabulary 7)
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 7).requires_grad_(not frozen)
    hidden_NH = torch.randn(20, 8, requires_grad=True)
    target_N = torch.randint(0, 7, (20,))
    heads_run, real_logits = [], head_module._logits
    monkeypatch.setattr(head_module, "_logits", lambda hidden_CH, *a: heads_run.append(len(hidden_CH)) or real_logits(hidden_CH, *a))
    logp_N = head_logp(hidden_NH, linear, target_N)
    assert heads_run == ([1] * 20 if frozen else [4] * 5)  # 8 inputs: 4 positions a chunk
    full_N = torch.log_softmax(linear(hidden_NH), -1).gather(-1, target_N[:, None]).squeeze(-1)
    assert torch.allclose(logp_N, full_N, atol=1e-6)
    params = [hidden_NH] if frozen else [hidden_NH, *linear.parameters()]
    for got, want in zip(torch.autograd.grad(logp_N.sum(), params), torch.autograd.grad(full_N.sum(), params), strict=True):
        assert torch.allclose(got, want, atol=1e-6)


def test_a_head_that_is_not_a_plain_linear_takes_the_full_path():
    model = load_model(resolve_model_source("tiny-random-llama"), torch.float32)
    assert plain_head(model) is model.lm_head
    model.config.final_logit_softcapping = 30.0  # logits capped after the head: hidden @ W.T is not them
    assert plain_head(model) is None


def _full_logp(model, tokens_BT, attention_BT, temperature):
    """The reference: every position's logits from the model, log-softmaxed whole."""
    position_BT = (attention_BT.cumsum(-1) - 1).clamp(min=0)
    logits_BTV = model(input_ids=tokens_BT, attention_mask=attention_BT, position_ids=position_BT).logits
    logp_BT = torch.log_softmax(logits_BTV[:, :-1].float() / temperature, -1).gather(-1, tokens_BT[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(logp_BT, (1, 0))


def _moved_tiny_model() -> torch.nn.Module:
    """The tiny model with every weight moved away from its random start, so that lm_head matters."""
    torch.manual_seed(1)
    model = load_model(resolve_model_source("tiny-random-llama"), torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _sampled(model: torch.nn.Module):
    """Three completions of each of three prompts, sampled from `model` at temperature 0.8, and an
    arbitrary upstream gradient for their log-probs."""
    engine = HFEngine(max_new_tokens=6, temperature=0.8)
    engine.setup(model, _tokenizer())
    rollout = engine.generate([[5, 20, 21], [5, 30, 31, 32, 33], [5, 40]], n=3, seed=0)
    return rollout, torch.randn(rollout.tokens_BT.shape)


@pytest.mark.parametrize("lora", [None, LoRA(r=4)])
def test_token_and_shared_prompt_logp_equal_the_full_logits_path(monkeypatch, lora):
    monkeypatch.setattr(head_module, "HEAD_CHUNK_BYTES", 4 * 99 * 5)  # 5 positions a chunk (vocabulary 99)
    model = _moved_tiny_model()
    model = apply_lora(model, lora) if lora is not None else model
    if lora is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.3)
    assert plain_head(model) is not None
    trainable = [p for p in model.parameters() if p.requires_grad]
    rollout, weights_BT = _sampled(model)
    tokens_BT, attention_BT, mask_BT = rollout.tokens_BT, rollout.attention_BT, rollout.mask_BT

    full_BT = _full_logp(model, tokens_BT, attention_BT, 0.8)
    expected = torch.autograd.grad((full_BT * mask_BT * weights_BT).sum(), trainable)
    for logp_BT in (
        token_logp(model, tokens_BT, attention_BT, 0.8, rollout.prompt_width),
        shared_prompt_logp(model, tokens_BT, attention_BT, rollout.group_B, rollout.prompt_width, 0.8),
    ):
        assert torch.allclose(logp_BT * mask_BT, full_BT * mask_BT, atol=1e-5)
        grads = torch.autograd.grad((logp_BT * mask_BT * weights_BT).sum(), trainable)
        for got, want in zip(grads, expected, strict=True):
            # To 1e-5 of the largest gradient entry (some are ~50 here): float32's summation order
            # differs between any two ways of computing them, one chunk or many alike (~1e-6).
            assert (got - want).abs().max() <= 1e-5 * want.abs().max().clamp(min=1)


def _tokenizer():
    from lit_posttrain.models import load_tokenizer

    return load_tokenizer(resolve_model_source("tiny-random-llama"))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("from_hidden", [True, False], ids=["hidden_and_head", "logits_given"])
def test_divergence_in_chunks_equals_the_full_divergence(monkeypatch, beta, from_hidden):
    from lit_posttrain.head import divergence_in_chunks
    from lit_posttrain.losses.distillation import generalized_jsd

    monkeypatch.setattr(head_module, "HEAD_CHUNK_BYTES", 3 * 4 * 6)  # 3 positions a chunk over 6 entries
    torch.manual_seed(2)
    head, other_head = torch.nn.Linear(5, 7, bias=False), torch.nn.Linear(5, 8, bias=False)  # a padded other vocabulary
    hidden_NH, other_NH = torch.randn(10, 5, requires_grad=True), torch.randn(10, 5)
    weights_N = torch.randn(10)

    def jsd(student_NV, teacher_NV):
        return generalized_jsd(student_NV, teacher_NV, beta)

    full_N = jsd(head(hidden_NH)[:, :6] / 0.7, other_head(other_NH)[:, :6].detach() / 0.7)
    if from_hidden:
        chunked_N = divergence_in_chunks(hidden_NH, head, other_NH, other_head, jsd, 0.7, vocab=6)
    else:
        chunked_N = divergence_in_chunks(head(hidden_NH), None, other_head(other_NH), None, jsd, 0.7, vocab=6)
    assert chunked_N.shape == (10,) and torch.allclose(chunked_N, full_N, atol=1e-6)
    params = [hidden_NH, head.weight]
    grads = torch.autograd.grad((chunked_N * weights_N).sum(), params)
    expected = torch.autograd.grad((full_N * weights_N).sum(), params)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


def test_opds_full_vocabulary_divergence_equals_the_full_logits_path(monkeypatch):
    from lit_posttrain.losses.distillation import generalized_jsd
    from lit_posttrain.methods.opd import OPD

    monkeypatch.setattr(head_module, "HEAD_CHUNK_BYTES", 4 * 99 * 4)  # 4 positions a chunk
    module = OPD(model="tiny-random-llama", teacher="tiny-random-llama:1", dtype="float32")
    module.configure_model()
    engine = HFEngine(max_new_tokens=6)
    engine.setup(module.policy, module.tokenizer)
    rollout = engine.generate([[5, 20, 21], [5, 30, 31, 32, 33]], n=2, seed=0)
    trainable = [p for p in module.policy.parameters() if p.requires_grad]

    def divergence(student_NV, teacher_NV):
        return generalized_jsd(student_NV, teacher_NV, 0.5)

    chunked_N = module.completion_divergence(rollout, divergence)
    with torch.no_grad():
        teacher_NV = completion_logits(module.teacher, rollout)
    full_N = divergence(completion_logits(module.policy, rollout), teacher_NV)
    assert chunked_N.shape == (int(rollout.mask_BT.sum()),) and len(chunked_N) > 4
    assert torch.allclose(chunked_N, full_N, atol=1e-6)
    got = torch.autograd.grad(chunked_N.sum(), trainable)
    want = torch.autograd.grad(full_N.sum(), trainable)
    for a, b in zip(got, want, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max().clamp(min=1)


def test_otrs_step_in_chunks_equals_the_step_in_one(monkeypatch):
    """OTR's loss, its candidates (drawn chunk by chunk from one seeded generator) and its gradient
    are the same in chunks of 3 positions as with every position in one chunk."""
    from lit_posttrain.data.batches import Batch, Row
    from lit_posttrain.data.task import Example
    from lit_posttrain.methods.otr import OTR
    from tests.helpers.steps import offline

    rows = [
        Row(Example([{"role": "user", "content": "q"}], answer="a"), prompt, demonstration)
        for prompt, demonstration in (([5, 20, 21], [7, 8, 9, 10, 2]), ([5, 30], [11, 12, 2]), ([5, 40, 41, 42], [13, 2]))
    ]
    results = []
    for positions in (3, 10_000):
        monkeypatch.setattr(head_module, "HEAD_CHUNK_BYTES", positions * 4 * 99)
        torch.manual_seed(0)
        module = offline(OTR, k=8)
        loss = module.training_step(Batch(rows), 0)  # its backward included
        results.append((loss.item(), [p.grad.clone() for p in module.policy.parameters()]))
    (loss_chunked, grads_chunked), (loss_whole, grads_whole) = results
    assert loss_chunked == pytest.approx(loss_whole, abs=1e-6)
    for a, b in zip(grads_chunked, grads_whole, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max().clamp(min=1)


def completion_logits(model, rollout):
    """The reference: every position's logits from the model, those predicting a completion token
    kept, in row order."""
    position_BT = (rollout.attention_BT.cumsum(-1) - 1).clamp(min=0)
    logits_BTV = model(input_ids=rollout.tokens_BT, attention_mask=rollout.attention_BT, position_ids=position_BT).logits
    return logits_BTV[:, :-1][rollout.mask_BT[:, 1:]]


@pytest.fixture
def one_process_mesh():
    """A process group of one (gloo) and its device mesh: FSDP2 in this process."""
    import socket

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    finally:
        dist.destroy_process_group()


def test_under_fsdp2_the_head_runs_in_chunks_with_the_full_paths_values_and_gradients(monkeypatch, one_process_mesh):
    """A sharded policy's head is the root unit's, its weight a DTensor until the forward gathers
    it: it still runs in chunks (not a micro-batch's whole logits, as before 2026-12-04), and the
    sharded weights' gradients equal the unsharded model's full-logits ones, tied head included."""
    import copy

    from torch.distributed.tensor import DTensor

    from lit_posttrain.sharding import shard_policy

    monkeypatch.setattr(head_module, "HEAD_CHUNK_BYTES", 4 * 99 * 5)  # 5 positions a chunk (vocabulary 99)
    calls = []
    real_apply = head_module._ChunkedHeadLogp.apply
    monkeypatch.setattr(head_module._ChunkedHeadLogp, "apply", lambda *a: calls.append(1) or real_apply(*a))
    model = _moved_tiny_model()
    assert model.config.tie_word_embeddings
    sharded = copy.deepcopy(model)
    shard_policy(sharded, one_process_mesh, lora=False)
    assert isinstance(sharded.lm_head.weight, DTensor) and plain_head(sharded) is sharded.lm_head
    rollout, weights_BT = _sampled(model)
    tokens_BT, attention_BT, mask_BT = rollout.tokens_BT, rollout.attention_BT, rollout.mask_BT
    full_BT = _full_logp(model, tokens_BT, attention_BT, 0.8)
    (full_BT * mask_BT * weights_BT).sum().backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    for logp_of in (
        lambda: token_logp(sharded, tokens_BT, attention_BT, 0.8, rollout.prompt_width),
        lambda: shared_prompt_logp(sharded, tokens_BT, attention_BT, rollout.group_B, rollout.prompt_width, 0.8),
    ):
        sharded.zero_grad(set_to_none=True)
        logp_BT = logp_of()
        assert torch.allclose(logp_BT * mask_BT, full_BT * mask_BT, atol=1e-5)
        (logp_BT * mask_BT * weights_BT).sum().backward()  # FSDP2's hooks reduce the gathered gradients
        for name, p in sharded.named_parameters():
            got, want = p.grad.full_tensor(), expected[name]
            assert (got - want).abs().max() <= 1e-5 * want.abs().max().clamp(min=1), name
    assert len(calls) == 2  # each path ran the head in chunks
    assert isinstance(sharded.lm_head.weight, DTensor)  # the backward resharded the root
    with pytest.raises(RuntimeError, match="an FSDP2 shard: run the head after the model's forward"):
        head_logp(torch.randn(4, model.config.hidden_size), sharded.lm_head, torch.zeros(4, dtype=torch.long))


def test_the_in_place_logsumexp_is_torchs_to_the_bit_and_leaves_the_softmax():
    from lit_posttrain.head import _logsumexp_

    logits_CV = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0)) * 30
    logits_CV[1, :500] = -math.inf  # masked entries
    logits_CV[2] = -math.inf  # a row with nothing allowed: -inf, as torch's
    for softmax in (True, False):
        overwritten = logits_CV.clone()
        lse_C = _logsumexp_(overwritten, softmax=softmax)
        assert torch.equal(lse_C, torch.logsumexp(logits_CV, -1))
        expected = torch.softmax(logits_CV, -1) if softmax else (logits_CV - logits_CV.amax(-1, keepdim=True)).exp()
        torch.testing.assert_close(overwritten[[0, 1, 3, 4]], expected[[0, 1, 3, 4]], rtol=1e-6, atol=1e-7)
