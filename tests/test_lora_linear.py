import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoRALinear

from lit_posttrain.lora_linear import FusedLoRALinear, _LoRAMatmuls
from lit_posttrain.models import LoRA, apply_lora, load_model


def test_the_function_s_gradients_are_the_formula_s():
    """gradcheck in float64: the hand-written backward against finite differences of the forward."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    a = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: _LoRAMatmuls.apply(x, weight, bias, a, b, 0.7), (x, a, b))
    out = _LoRAMatmuls.apply(x, weight, bias, a, b, 0.7)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, x @ weight.T + bias + 0.7 * (x @ a.T) @ b.T, rtol=0, atol=1e-12)


def _pair(tiny_model_dir, dropout: float = 0.0):
    """The tiny model with LoRA twice, the same adapter weights (B non-zero): through `apply_lora`
    (fused) and through peft's own layer."""
    fused = apply_lora(load_model(tiny_model_dir, torch.float32), LoRA(r=4, alpha=8, dropout=dropout))
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    plain = get_peft_model(load_model(tiny_model_dir, torch.float32), config)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in fused.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def _logits_and_grads(model, tokens_BT):
    logits_BTV = model(tokens_BT).logits
    weights_BTV = torch.linspace(-1, 1, logits_BTV.numel()).view(logits_BTV.shape)
    (logits_BTV.float() * weights_BTV).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return logits_BTV.detach().float(), grads


def test_fused_layers_give_peft_s_values_and_gradients(tiny_model_dir):
    fused, plain = _pair(tiny_model_dir)
    adapted = [m for m in fused.modules() if isinstance(m, PeftLoRALinear)]
    assert adapted and all(type(m) is FusedLoRALinear for m in adapted)
    assert all(type(m) is PeftLoRALinear for m in plain.modules() if isinstance(m, PeftLoRALinear))
    assert all(m._fusable(torch.zeros(1)) is not None for m in adapted)
    tokens_BT = torch.tensor([[5, 20, 21, 22, 23], [5, 30, 31, 32, 33]])

    logits, grads = _logits_and_grads(fused, tokens_BT)
    expected_logits, expected_grads = _logits_and_grads(plain, tokens_BT)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        # float32 rounding: the sums run in another order (scaled inside the matmul, not after)
        scale = expected_grads[name].abs().max()
        assert (grads[name] - expected_grads[name]).abs().max() <= 1e-6 * scale, name
        assert grads[name].dtype == torch.float32 and grads[name].abs().sum() > 0, name

    # Under bf16 autocast (what bf16-mixed runs) both compute in bf16 and round differently.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, grads = _logits_and_grads(fused, tokens_BT)
        expected_logits, expected_grads = _logits_and_grads(plain, tokens_BT)
    torch.testing.assert_close(logits, expected_logits, rtol=0.03, atol=0.03)
    for name in grads:
        assert grads[name].dtype == torch.float32, name  # the adapters' float32 masters get float32 gradients
        assert (grads[name] - expected_grads[name]).abs().max() <= 0.05 * expected_grads[name].abs().max(), name


def test_disabled_adapters_and_dropout_run_peft_s_own_forward(tiny_model_dir):
    fused, plain = _pair(tiny_model_dir)
    tokens_BT = torch.tensor([[5, 20, 21, 22]])
    base = load_model(tiny_model_dir, torch.float32)
    with fused.disable_adapter():  # the reference model under LoRA
        assert all(m._fusable(torch.zeros(1)) is None for m in fused.modules() if isinstance(m, FusedLoRALinear))
        torch.testing.assert_close(fused(tokens_BT).logits, base(tokens_BT).logits, rtol=0, atol=1e-6)

    with_dropout, plain_with_dropout = _pair(tiny_model_dir, dropout=0.5)
    layers = [m for m in with_dropout.modules() if isinstance(m, FusedLoRALinear)]
    assert layers and all(m._fusable(torch.zeros(1)) is None for m in layers)
    torch.manual_seed(1)
    out = with_dropout(tokens_BT).logits
    torch.manual_seed(1)
    torch.testing.assert_close(out, plain_with_dropout(tokens_BT).logits, rtol=0, atol=0)

    # Mixed dtypes without autocast (a bf16 base, float32 adapters): peft's cast-and-add.
    layer = layers[0]
    assert layer._fusable(torch.zeros(1, dtype=torch.bfloat16)) is None


def test_a_saved_adapter_folder_is_plain_peft(tiny_model_dir, tmp_path):
    fused, _ = _pair(tiny_model_dir)
    fused.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert not any("custom" in key for key in config)
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(load_model(tiny_model_dir, torch.float32), tmp_path)
    tokens_BT = torch.tensor([[5, 20, 21, 22]])
    torch.testing.assert_close(loaded(tokens_BT).logits, fused(tokens_BT).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merge", [True, False])
def test_merging_gives_the_fused_forward(tiny_model_dir, merge):
    fused, _ = _pair(tiny_model_dir)
    tokens_BT = torch.tensor([[5, 20, 21, 22]])
    expected = fused(tokens_BT).logits.detach()
    if merge:
        merged = fused.merge_and_unload()
        torch.testing.assert_close(merged(tokens_BT).logits, expected, rtol=1e-5, atol=1e-5)
    else:  # merged in place and back, as peft's merge_adapter/unmerge_adapter do
        fused.merge_adapter()
        assert all(m._fusable(torch.zeros(1)) is None for m in fused.modules() if isinstance(m, FusedLoRALinear))
        torch.testing.assert_close(fused(tokens_BT).logits, expected, rtol=1e-5, atol=1e-5)
        fused.unmerge_adapter()
        torch.testing.assert_close(fused(tokens_BT).logits, expected, rtol=1e-5, atol=1e-5)
