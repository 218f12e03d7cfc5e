"""The RMSNorm of Llama-family models (`NORMS`: transformers writes the same forward for each) with
a backward of its own, which keeps less for it and makes fewer passes.

transformers' forward, `weight * (h * rsqrt(mean(h^2) + eps)).to(dtype)` with `h = x.float()`,
leaves autograd a float32 copy of every normed activation and the bf16 normed output to keep for
the backward (6 bytes an element: 61 norms x 576 wide for the built-in model, about 0.2 MB a
token), and its backward retraces the forward's passes one by one. Here the function keeps the
input (bf16 under bf16-mixed: 2 bytes an element) and the per-row `rstd`, and the backward is

    n = x * rstd,  g_n = g * weight,  g_x = rstd * (g_n - n * mean(g_n * n)),  g_weight = sum(g * n.to(dtype))

The values and gradients are transformers' (tested to float32 rounding). Applied by `load_model`
to every norm of a class in `NORMS` (Liger's kernels replace a norm's forward the same way).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Classes whose forward is exactly LlamaRMSNorm's in the transformers this runs on (a test checks
# the source of each against Llama's).
NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm")


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_SH: Tensor, weight_H: Tensor, eps: float) -> Tensor:
        h_SH = x_SH.float()  # transformers' `hidden_states.to(torch.float32)`, made once
        rstd_S1 = torch.rsqrt(h_SH.pow(2).mean(-1, keepdim=True) + eps)
        normed_SH = (h_SH * rstd_S1).to(x_SH.dtype)
        ctx.save_for_backward(x_SH, rstd_S1, weight_H)
        return weight_H * normed_SH

    @staticmethod
    def backward(ctx, grad_SH: Tensor):
        x_SH, rstd_S1, weight_H = ctx.saved_tensors
        n_SH = x_SH.float() * rstd_S1
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            # through `weight * normed` and the cast to the input's dtype, rounded as autograd rounds it
            grad_n_SH = (grad_SH * weight_H).to(x_SH.dtype).float()
            grad_x = (rstd_S1 * (grad_n_SH - n_SH * (grad_n_SH * n_SH).mean(-1, keepdim=True))).to(x_SH.dtype)
        if ctx.needs_input_grad[1]:
            products_SH = grad_SH * n_SH.to(x_SH.dtype)
            grad_weight = products_SH.reshape(-1, products_SH.shape[-1]).sum(0).to(weight_H.dtype)
        return grad_x, grad_weight, None


def _forward(self, hidden_states: Tensor) -> Tensor:
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def use_own_rms_norm(model: torch.nn.Module) -> int:
    """Make every norm of `model` whose class is in `NORMS` an instance of `Own<class>`, its subclass
    with this module's forward; how many. A subclass, not a forward set on each instance: a model
    pickled with its norms (a checkpoint's hyper-parameters can hold an engine's copy) loads again."""
    norms = [m for m in model.modules() if type(m).__name__ in NORMS and type(m).__module__ == _module_of(type(m).__name__)]
    for norm in norms:
        norm.__class__ = own_class(type(norm))
    return len(norms)


def own_class(cls: type) -> type:
    """`Own<cls.__name__>`, made once, a name of this module (pickle finds it through `__getattr__`)."""
    name = "Own" + cls.__name__
    if name not in _OWN:
        _OWN[name] = type(name, (cls,), {"forward": _forward, "__module__": __name__, "__qualname__": name})
    return _OWN[name]


_OWN: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """`Own<norm>` for a norm in `NORMS`, made on first use: a pickle names its class this way."""
    base = name.removeprefix("Own")
    if name.startswith("Own") and base in NORMS:
        import importlib

        return own_class(getattr(importlib.import_module(_module_of(base)), base))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _module_of(norm: str) -> str:
    """transformers' module that defines `norm` (a class of `NORMS`): a model's own code (remote code)
    may name a class alike and compute otherwise."""
    family = norm.removesuffix("RMSNorm").lower()
    return f"transformers.models.{family}.modeling_{family}"
