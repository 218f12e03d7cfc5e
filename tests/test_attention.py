import pytest
import torch

from lit_posttrain.attention import ATTENTION, SHORT_KEYS, takes_matmuls
from lit_posttrain.logprobs import shared_prompt_logp, token_logp
from lit_posttrain.models import load_model


def _pair(tiny_model_dir):
    """The tiny model twice, the same weights: as loaded by default, and with transformers' SDPA."""
    default = load_model(tiny_model_dir, torch.float32)
    sdpa = load_model(tiny_model_dir, torch.float32, attn_implementation="sdpa")
    return default, sdpa


def test_the_default_attention_is_ours_and_an_explicit_choice_is_kept(tiny_model_dir):
    default, sdpa = _pair(tiny_model_dir)
    assert default.config._attn_implementation == ATTENTION
    assert sdpa.config._attn_implementation == "sdpa"
    assert load_model(tiny_model_dir, torch.float32, attn_implementation="eager").config._attn_implementation == "eager"


def test_short_keys_on_the_cpu_take_matmuls_and_the_rest_sdpa():
    query = torch.zeros(2, 4, 3, 16)
    assert takes_matmuls(query, torch.zeros(2, 2, SHORT_KEYS, 16))
    assert not takes_matmuls(query, torch.zeros(2, 2, SHORT_KEYS + 1, 16))
    assert not takes_matmuls(query, torch.zeros(2, 2, 8, 16), position_bias=torch.zeros(1))
    assert not takes_matmuls(query.to("meta"), torch.zeros(2, 2, 8, 16, device="meta"))


def _values_and_grads(model, run):
    out = run(model)
    weights = torch.linspace(-1, 1, out.numel()).view(out.shape)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("layout", ["left_padded", "right_padded", "no_mask", "shared_prompt"])
def test_values_and_gradients_equal_sdpa_s(tiny_model_dir, layout):
    default, sdpa = _pair(tiny_model_dir)
    tokens_BT = torch.tensor([[5, 20, 21, 22, 23, 24, 25], [0, 0, 5, 30, 31, 32, 33], [5, 40, 41, 42, 43, 44, 45]])
    attention_BT = torch.ones_like(tokens_BT)
    if layout == "left_padded":
        attention_BT[1, :2] = 0
    if layout == "right_padded":
        attention_BT[0, 5:] = 0
    if layout == "shared_prompt":  # prompt once per group, its cache shared by the group's completions
        group_R = torch.tensor([0, 0, 1])
        tokens_BT[1, :4] = tokens_BT[0, :4]
        attention_BT[2, 5:] = 0

        def run(model):
            return shared_prompt_logp(model, tokens_BT, attention_BT, group_R, width=4, temperature=0.9)
    elif layout == "no_mask":  # transformers passes no mask and SDPA is causal by itself

        def run(model):
            return model(tokens_BT).logits
    else:
        # Scored where the token and the one before it are real: a left-padded row's first token is
        # predicted from padding, which no key is shown to, and SDPA and the matmuls fill that
        # position differently (neither value is used).
        scored_BT = attention_BT * torch.nn.functional.pad(attention_BT[:, :-1], (1, 0))

        def run(model):
            return token_logp(model, tokens_BT, attention_BT) * scored_BT

    values, grads = _values_and_grads(default, run)
    expected_values, expected_grads = _values_and_grads(sdpa, run)
    torch.testing.assert_close(values, expected_values, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys() and grads
    for name in grads:
        scale = expected_grads[name].abs().max()
        assert (grads[name] - expected_grads[name]).abs().max() <= 1e-5 * scale, name


def test_generation_with_a_cache_equals_sdpa_s(tiny_model_dir):
    default, sdpa = _pair(tiny_model_dir)
    prompt_BT = torch.tensor([[0, 0, 5, 20, 21], [5, 30, 31, 32, 33]])
    attention_BT = (prompt_BT != 0).long()
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        out = default.generate(prompt_BT, attention_mask=attention_BT, output_logits=True, return_dict_in_generate=True, **kwargs)
        expected = sdpa.generate(prompt_BT, attention_mask=attention_BT, output_logits=True, return_dict_in_generate=True, **kwargs)
    assert torch.equal(out.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(expected.logits), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", ["padded", "additive", "causal", "one_query"])
def test_grouped_query_heads_equal_sdpa_s(mask):
    """The built-in model's layout, several query heads to a key/value head (the tiny model has
    one each), called as transformers calls it: values and gradients equal SDPA's."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lit_posttrain.attention import attention

    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, width = 3, 6, 2, 16
    queries = 1 if mask == "one_query" else 7
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, heads // kv_heads
    inputs = [
        torch.randn(batch, heads, queries, width, generator=generator),
        torch.randn(batch, kv_heads, 7, width, generator=generator),
        torch.randn(batch, kv_heads, 7, width, generator=generator),
    ]
    allowed_BQS = torch.ones(7, 7, dtype=torch.bool).tril()[-queries:].expand(batch, queries, 7).clone()
    allowed_BQS[0, :, :2] = False  # the first row left-padded by two
    attention_mask = {
        "padded": allowed_BQS[:, None],
        "additive": torch.zeros(batch, 1, queries, 7).masked_fill(~allowed_BQS[:, None], -1e4),
        "causal": None,
        "one_query": allowed_BQS[:, None],
    }[mask]
    # A query that sees no key (row 0's padding) is never used, and the two kernels differ there.
    seen_BQ11 = allowed_BQS.any(-1)[:, :, None, None] if attention_mask is not None else torch.ones(1, 1, 1, 1, dtype=torch.bool)
    weights = torch.linspace(-1, 1, batch * queries * heads * width).view(batch, queries, heads, width) * seen_BQ11
    results = []
    for function in (attention, sdpa_attention_forward):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out_BQHD, _ = function(module, *leaves, attention_mask, scaling=0.3)
        (out_BQHD * weights).sum().backward()
        results.append([out_BQHD.detach() * seen_BQ11, *(t.grad for t in leaves)])
    for ours, sdpa in zip(*results, strict=True):
        torch.testing.assert_close(ours, sdpa, atol=1e-5, rtol=1e-5)
