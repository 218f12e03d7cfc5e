"""peft's LoRA linear layer with its forward and backward as one autograd function: the adapter's
product is accumulated into the frozen layer's output (and its input gradient into the frozen
layer's) inside the matmul, instead of as separate passes over full-width tensors.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: after the two matmuls it multiplies
and adds over the whole `rows x out_features` output, casts the input to the adapters' float32
(autocast then casts it back, keeping another copy for the backward), and the backward repeats
those passes. On a CPU in bf16 such a pass costs about as much as the layer's matmul itself
(measured on an Intel Xeon with AMX: a scale-and-add over 1,312 x 1,536 took 0.96 ms, the matmul
it follows 1.0 ms). Here, with `x_A = x @ A.T` (rows x rank, small):

    forward:  out = x @ W.T (+ b);  out += scaling * x_A @ B.T           (one addmm, in place)
    backward: g_x = g @ W;  g_x += scaling * (g @ B) @ A                   (one addmm, in place)
              g_A = scaling * (g @ B).T @ x,  g_B = scaling * g.T @ x_A    (rank-wide products)

The values and gradients are peft's (tested to float32 rounding); the parameters, their names,
saving, merging and `disable_adapter` are peft's own, since the class is peft's with only the
forward replaced. Cases this does not cover run peft's forward unchanged: dropout on the adapter
input, DoRA and other variants, a trainable base layer or adapter bias, several active adapters,
merged or disabled adapters, mixed dtypes without autocast (a bf16 base with float32 adapters).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as PeftLoRALinear
from torch import Tensor


class _LoRAMatmuls(torch.autograd.Function):
    """`x @ W.T + b + scaling * (x @ A.T) @ B.T`, every operand already in one compute dtype."""

    @staticmethod
    def forward(ctx, x_SI: Tensor, weight_OI: Tensor, bias_O: Tensor | None, a_RI: Tensor, b_OR: Tensor, scaling: float) -> Tensor:
        x_NI = x_SI.reshape(-1, x_SI.shape[-1])
        out_NO = torch.nn.functional.linear(x_NI, weight_OI, bias_O)
        xa_NR = x_NI @ a_RI.T
        out_NO.addmm_(xa_NR, b_OR.T, alpha=scaling)
        ctx.save_for_backward(x_NI, xa_NR, weight_OI, a_RI, b_OR)
        ctx.scaling, ctx.input_shape = scaling, x_SI.shape
        return out_NO.view(*x_SI.shape[:-1], out_NO.shape[-1])

    @staticmethod
    def backward(ctx, grad_SO: Tensor):
        x_NI, xa_NR, weight_OI, a_RI, b_OR = ctx.saved_tensors
        scaling = ctx.scaling
        grad_NO = grad_SO.reshape(-1, grad_SO.shape[-1])
        grad_b_NR = grad_NO @ b_OR
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x_NI = grad_NO @ weight_OI
            grad_x_NI.addmm_(grad_b_NR, a_RI, alpha=scaling)
            grad_x = grad_x_NI.view(ctx.input_shape)
        grad_a_RI = (grad_b_NR.T @ x_NI).mul_(scaling)
        grad_b_OR = (grad_NO.T @ xa_NR).mul_(scaling)
        return grad_x, None, None, grad_a_RI, grad_b_OR, None


class FusedLoRALinear(PeftLoRALinear):
    """peft's `lora.Linear` whose forward, where it can, is `_LoRAMatmuls` (see the module docstring).
    `apply_lora` registers it with peft for every adapted `nn.Linear`."""

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        operands = self._fusable(x) if not (args or kwargs) else None
        if operands is None:
            return super().forward(x, *args, **kwargs)
        weight, bias, a, b, scaling, dtype = operands
        cast = [None if t is None else t.to(dtype) for t in (x, weight, bias, a, b)]
        # The operands are cast here, as autocast would cast them; autocast off inside, so that it
        # does not see the function's ops a second time.
        with torch.autocast(x.device.type, enabled=False):
            out = _LoRAMatmuls.apply(cast[0], cast[1], cast[2], cast[3], cast[4], scaling)
        # The adapters' gradients come back in the compute dtype; autograd casts them to the
        # parameters' dtype through the `.to` above, as it does under autocast for peft's path.
        return out

    def _fusable(self, x: Tensor):
        """`(weight, bias, A, B, scaling, compute dtype)` when this call is one the fused function
        computes exactly as peft would, else None."""
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if (
            name not in self.lora_A
            or name in self.lora_variant
            or self.lora_bias[name]
            or not isinstance(self.lora_dropout[name], torch.nn.Identity)
        ):
            return None
        base = self.get_base_layer()
        if type(base) is not torch.nn.Linear or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return None
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        elif x.dtype == base.weight.dtype == a.dtype == b.dtype:
            dtype = x.dtype
        else:  # peft computes the adapters in their own dtype and adds in it: left to peft
            return None
        return base.weight, base.bias, a, b, self.scaling[name], dtype
