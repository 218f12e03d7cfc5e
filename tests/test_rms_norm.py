import inspect
import pickle

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from lit_posttrain.models import load_model
from lit_posttrain.rms_norm import NORMS, _module_of, _RMSNorm, own_class, use_own_rms_norm


def test_every_listed_norm_has_llama_s_forward():
    """The replacement is exact only for norms transformers writes as Llama's: checked in the
    transformers installed, so that a change there fails here and not in a run."""
    import importlib

    expected = inspect.getsource(LlamaRMSNorm.forward)
    for name in NORMS:
        module = importlib.import_module(_module_of(name))
        assert inspect.getsource(getattr(module, name).forward) == expected, name


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)])
def test_values_and_gradients_equal_transformers(dtypes):
    x_dtype, weight_dtype = dtypes
    torch.manual_seed(0)
    norm = LlamaRMSNorm(24, eps=1e-5).to(weight_dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
    x = (torch.randn(3, 5, 24) * 2).to(x_dtype)
    grad = torch.randn(3, 5, 24).to(torch.promote_types(x_dtype, weight_dtype))

    def run(forward):
        x_ = x.clone().requires_grad_(True)
        out = forward(x_)
        out.backward(grad)
        grads = x_.grad, norm.weight.grad.clone()
        norm.weight.grad = None
        return out.detach(), *grads

    expected = run(norm)
    got = run(lambda x_: _RMSNorm.apply(x_, norm.weight, norm.variance_epsilon))
    for name, a, b in zip(("output", "input gradient", "weight gradient"), got, expected, strict=True):
        assert a.dtype == b.dtype, name
        # float32: rounding only; bf16: at most one bf16 step of the value's size
        tolerance = 1e-5 if x_dtype == weight_dtype == torch.float32 else 1e-2
        assert (a.float() - b.float()).abs().max() <= tolerance * b.float().abs().max(), name


def test_load_model_gives_the_norms_their_own_backward(tiny_model_dir):
    model = load_model(tiny_model_dir, torch.float32)
    plain = load_model(tiny_model_dir, torch.float32)
    for m in plain.modules():
        if type(m).__name__.startswith("Own"):
            m.__class__ = type(m).__bases__[0]  # transformers' own class back
    norms = [m for m in model.modules() if isinstance(m, LlamaRMSNorm)]
    assert norms and all(type(m) is own_class(LlamaRMSNorm) for m in norms)
    assert use_own_rms_norm(model) == 0 and use_own_rms_norm(torch.nn.Linear(2, 2)) == 0
    remote = type("LlamaRMSNorm", (torch.nn.Module,), {"__module__": "some_model.modeling"})()
    assert use_own_rms_norm(remote) == 0  # a model's own class of the same name is left alone
    # a pickled model loads again, its norms still ours (checkpoints can hold one)
    loaded = pickle.loads(pickle.dumps(model))
    assert all(type(m) is own_class(LlamaRMSNorm) for m in loaded.modules() if isinstance(m, LlamaRMSNorm))
    tokens_BT = torch.tensor([[5, 20, 21, 22], [5, 30, 31, 32]])
    outs = []
    for m in (model, plain):
        logits = m(tokens_BT).logits
        (logits * torch.linspace(-1, 1, logits.numel()).view(logits.shape)).sum().backward()
        outs.append((logits.detach(), {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for name, g in outs[1][1].items():
        assert (outs[0][1][name] - g).abs().max() <= 1e-5 * g.abs().max(), name
