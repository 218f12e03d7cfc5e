"""The output head in chunks: per-token log-probs of given tokens, and full-vocabulary
divergences (KL, JSD) between two models, from the last hidden states, without a batch's logits in
memory.

A forward that asks the model for its logits keeps rows x positions x vocabulary of them (49k wide
for the built-in model) and, for the backward, a float32 copy: at 8 x 8 completions of 1,024
tokens that alone is 13 GB. Here the head runs on a chunk of positions at a time, forward and
again in the backward (Liger's fused linear cross-entropy bounds it the same way), so at most one
chunk's float32 logits exist: `HEAD_CHUNK_BYTES` (a trained head's chunk holds at least half as
many positions as the head has inputs: `TRAINED_HEAD_POSITIONS_PER_INPUT`). Where every position
fits in one chunk (short answers) its softmax is kept for the backward instead, so the head runs
once, as before. A frozen head (LoRA) needs no weight gradient: the hidden states' is made in the
forward, chunk by chunk, and the backward runs no head. The result and its gradients equal the
full-logits path's (tested in float32 to 1e-5); in bf16 the logits are rounded as the model's head
rounds them, then divided by the temperature in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

# A chunk's float32 logits (and its softmax in the backward) stay under this many bytes ...
HEAD_CHUNK_BYTES = 64 * 2**20
# ... unless the head is trained: each chunk then adds a product the size of the weight (vocabulary x
# inputs) into the weight's float32 gradient, which costs about as much as the logits of half as
# many positions as the head has inputs; a chunk of fewer is mostly that sum. Qwen2-0.5B's head
# (151,936 x 896), forward and backward over 3,584 positions in bf16, took 12.5 s in chunks of 110
# positions (64 MiB) and 5.9 s in chunks of 441 (256 MiB), 6.8 s in chunks of 882 (2-core Intel
# Xeon with AMX). So a trained head's chunks take at least this many positions per input of the
# head; their logits are then at most half the weight's float32 gradient, which the run holds anyway.
TRAINED_HEAD_POSITIONS_PER_INPUT = 0.5


def plain_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's output head where the logits are exactly `hidden @ W.T (+ b)`, else None: a head
    wrapped by peft, or a model that rescales or caps its logits after the head, takes the
    full-logits path instead.

    Under FSDP2 the head is the root unit's and its weight a shard (a DTensor) until the model's
    forward gathers it; the root keeps its weights gathered from its forward through its backward
    (FSDP2 does not reshard the root after the forward), so the head is used after the forward
    that made its hidden states, as every caller here does (`_gathered` checks it)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    rescaled = any(getattr(config, name, None) not in (None, 1.0) for name in ("final_logit_softcapping", "logit_scale"))
    if type(head) is not torch.nn.Linear or rescaled:
        return None
    return head


def _gathered(weight: Tensor) -> Tensor:
    if isinstance(weight, DTensor):
        raise RuntimeError(
            "the output head's weight is an FSDP2 shard: run the head after the model's forward, "
            "which gathers it (plain_head says when)"
        )
    return weight


def logit_width(states_NX: Tensor, head: torch.nn.Linear | None) -> int:
    """How many logits a position has: the head's outputs, or the width of logits given as states."""
    return head.weight.shape[0] if head is not None else states_NX.shape[-1]


def _positions_a_chunk(width: int, weight_VH: Tensor | None = None) -> int:
    """Positions a chunk of `width` logits from a head of weight `weight_VH` (None: logits given)."""
    trained = weight_VH is not None and weight_VH.requires_grad and torch.is_grad_enabled()
    least = int(TRAINED_HEAD_POSITIONS_PER_INPUT * weight_VH.shape[1]) if trained else 1
    return max(least, HEAD_CHUNK_BYTES // (4 * width))


def head_logp(hidden_SH: Tensor, head: torch.nn.Linear, target_S: Tensor, temperature: float = 1.0) -> Tensor:
    """`log softmax(head(hidden) / temperature)[target]` at every position, float32, the head run on
    chunks of positions. `S` is any leading shape (rows x positions), the same for both."""
    hidden_NH, target_N = hidden_SH.reshape(-1, hidden_SH.shape[-1]), target_S.reshape(-1)
    weight_VH, bias_V = _gathered(head.weight), head.bias
    # A frozen head (LoRA) needs only the hidden states' gradient, and that is a per-position
    # vector times the upstream gradient: made in the forward, the backward runs no head at all.
    frozen = not weight_VH.requires_grad and (bias_V is None or not bias_V.requires_grad)
    chunk = _positions_a_chunk(weight_VH.shape[0], weight_VH)
    ahead = frozen and torch.is_grad_enabled() and hidden_NH.requires_grad
    logp_N = _ChunkedHeadLogp.apply(hidden_NH, weight_VH, bias_V, target_N, temperature, chunk, ahead)
    return logp_N.view(target_S.shape)


def _logits(hidden_CH: Tensor, weight_VH: Tensor, bias_V: Tensor | None, temperature: float) -> Tensor:
    logits_CV = hidden_CH @ weight_VH.T if bias_V is None else torch.addmm(bias_V, hidden_CH, weight_VH.T)
    # In place, and not at all at temperature 1: a chunk is up to HEAD_CHUNK_BYTES, and every pass
    # over it and every fresh tensor of its size costs time (the frozen head's forward and backward
    # over 128 positions of the built-in model in bf16 went from 59 to 47-51 ms on a CPU).
    logits_CV = logits_CV.float()
    return logits_CV if temperature == 1.0 else logits_CV.div_(temperature)


def _logsumexp_(logits_CV: Tensor, softmax: bool) -> Tensor:
    """`torch.logsumexp(logits_CV, -1)`, the same to the bit, with the logits overwritten by their
    softmax (`softmax`) or by exp(logits - max). In place: torch's makes two temporaries the size
    of the chunk (logits - max, and its exp), and softmax a third. The built-in model's head,
    forward and backward under bf16 autocast, timed in turn (2-core Intel Xeon with AMX): frozen,
    128 positions, 26.3 -> 23.0 ms; trained, 1,024 positions in 3 chunks, 754 -> 724 ms."""
    max_C1 = logits_CV.amax(-1, keepdim=True)
    max_C1.masked_fill_(max_C1.abs() == math.inf, 0)  # as torch's: a row of -inf gives -inf, not NaN
    sum_C1 = logits_CV.sub_(max_C1).exp_().sum(-1, keepdim=True)
    if softmax:
        logits_CV.div_(sum_C1)
    return sum_C1.log_().add_(max_C1).squeeze(-1)


def _logit_grad(probs_CV: Tensor, target_C: Tensor, grad_C: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """d (grad . logp[target]) / d head output: grad x (onehot(target) - softmax), through the
    division by T, in `dtype`; `probs_CV` is overwritten."""
    grad_CV = probs_CV.mul_(-grad_C[:, None])
    grad_CV.scatter_add_(-1, target_C[:, None], grad_C[:, None].float())
    return (grad_CV if temperature == 1.0 else grad_CV.div_(temperature)).to(dtype)


class _ChunkedHeadLogp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, bias_V, target_N, temperature, chunk, ahead):
        logp_N = torch.empty(hidden_NH.shape[0], dtype=torch.float32, device=hidden_NH.device)
        ctx.probs_NV = ctx.direction_NH = None
        if ahead:  # d logp_n / d hidden_n, for a frozen head: the backward only scales it
            ctx.direction_NH = torch.empty_like(hidden_NH)
        for start in range(0, len(logp_N), chunk):
            stop = start + chunk
            logits_CV = _logits(hidden_NH[start:stop], weight_VH, bias_V, temperature)
            picked_C = logits_CV.gather(-1, target_N[start:stop, None]).squeeze(-1)
            # Unless the backward makes this chunk's softmax again (several chunks, a trained head).
            keep = ahead or len(logp_N) <= chunk
            logp_N[start:stop] = picked_C - _logsumexp_(logits_CV, softmax=keep)
            if not keep:
                continue
            probs_CV = logits_CV
            if ahead:  # the gradient for an upstream 1, through the head
                ones_C = probs_CV.new_ones(len(probs_CV))
                direction_CV = _logit_grad(probs_CV, target_N[start:stop], ones_C, temperature, hidden_NH.dtype)
                ctx.direction_NH[start:stop] = (direction_CV @ weight_VH).to(hidden_NH.dtype)
            else:
                # Everything in one chunk (short completions): keep its softmax, within the
                # budget, rather than run the head again in the backward.
                ctx.probs_NV = probs_CV
        if not ahead:
            ctx.save_for_backward(hidden_NH, weight_VH, bias_V, target_N)
        ctx.temperature, ctx.chunk = temperature, chunk
        # Under mixed precision the backward runs its matmuls (the head made again included) with
        # the forward's autocast, as autograd does for the model's own layers.
        device = hidden_NH.device.type
        ctx.autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        return logp_N

    @staticmethod
    def backward(ctx, grad_N):
        device = grad_N.device.type
        with torch.autocast(device, dtype=ctx.autocast, enabled=ctx.autocast is not None):
            return _ChunkedHeadLogp._backward(ctx, grad_N)

    @staticmethod
    def _backward(ctx, grad_N):
        if ctx.direction_NH is not None:
            grad_hidden_NH = (grad_N[:, None] * ctx.direction_NH).to(ctx.direction_NH.dtype)
            return grad_hidden_NH, None, None, None, None, None, None
        hidden_NH, weight_VH, bias_V, target_N = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_hidden_NH = torch.empty_like(hidden_NH) if needs_hidden else None
        # Accumulated over chunks in float32: one rounding at the end, as one matmul would have.
        grad_weight_VH = torch.zeros_like(weight_VH, dtype=torch.float32) if needs_weight else None
        grad_bias_V = torch.zeros_like(bias_V, dtype=torch.float32) if needs_bias else None
        for start in range(0, hidden_NH.shape[0], ctx.chunk):
            stop = start + ctx.chunk
            hidden_CH, grad_C = hidden_NH[start:stop], grad_N[start:stop]
            if ctx.probs_NV is not None:
                probs_CV, ctx.probs_NV = ctx.probs_NV, None
            else:
                probs_CV = _logits(hidden_CH, weight_VH, bias_V, ctx.temperature)
                _logsumexp_(probs_CV, softmax=True)
            grad_CV = _logit_grad(probs_CV, target_N[start:stop], grad_C, ctx.temperature, hidden_NH.dtype)
            if needs_hidden:
                grad_hidden_NH[start:stop] = (grad_CV @ weight_VH).to(hidden_NH.dtype)
            if needs_weight:  # added into the float32 sum as it is read: no float32 copy of a chunk's product
                grad_weight_VH.add_(grad_CV.T @ hidden_CH)
            if needs_bias:
                grad_bias_V += grad_CV.float().sum(0)
        grad_weight_VH = grad_weight_VH.to(weight_VH.dtype) if needs_weight else None
        grad_bias_V = grad_bias_V.to(bias_V.dtype) if needs_bias else None
        return grad_hidden_NH, grad_weight_VH, grad_bias_V, None, None, None, None


def map_logits_in_chunks(states_NX: Tensor, head: torch.nn.Linear | None, fn, *extra_N: Tensor, vocab: int | None = None) -> Tensor:
    """`fn(logits_CV, *extra_C)` over chunks of positions, concatenated: whatever a loss or a
    measure needs from the full distribution at each position, without all positions' logits at
    once. `states` are last hidden states with their `head`, or logits already (head None, where the
    model's head is not plain: `logprobs.completion_states`); `logits_CV` are float32, over the
    first `vocab` entries. With gradients each chunk's logits are freed after its forward and made
    again in the backward (activation checkpointing per chunk)."""
    width = vocab or logit_width(states_NX, head)
    chunk = _positions_a_chunk(width, None if head is None else head.weight)

    if head is not None:
        _gathered(head.weight)

    def one_chunk(states_CX: Tensor, *extra_C: Tensor) -> Tensor:
        return fn((states_CX if head is None else head(states_CX))[:, :width].float(), *extra_C)

    checkpointed = torch.is_grad_enabled() and states_NX.requires_grad
    parts = []
    for start in range(0, max(states_NX.shape[0], 1), chunk):  # no position: one empty chunk, fn's own shape
        args = (states_NX[start : start + chunk], *(x[start : start + chunk] for x in extra_N))
        parts.append(torch.utils.checkpoint.checkpoint(one_chunk, *args, use_reentrant=False) if checkpointed else one_chunk(*args))
    return torch.cat(parts)


def divergence_in_chunks(
    states_NX: Tensor, head: torch.nn.Linear | None, other_NX: Tensor, other_head: torch.nn.Linear | None,
    divergence, temperature: float = 1.0, vocab: int | None = None,
) -> Tensor:  # fmt: skip
    """`divergence(logits_NV, other_logits_NV)` per position (a full-vocabulary KL or JSD) at
    `temperature`, through `map_logits_in_chunks`: the first side keeps its gradient, the other
    (states and head, or logits) is taken without."""
    width = vocab or logit_width(states_NX, head)

    def chunk_divergence(logits_CV: Tensor, other_CX: Tensor) -> Tensor:
        with torch.no_grad():
            other_CV = (other_CX if other_head is None else other_head(other_CX))[:, :width].float()
        return divergence(logits_CV / temperature, other_CV / temperature)

    return map_logits_in_chunks(states_NX, head, chunk_divergence, other_NX, vocab=width)
