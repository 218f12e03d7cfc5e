"""transformers' SDPA attention, except on a CPU with short keys, where the attention runs as two
matmuls and a softmax: the model's default attention here (`load_model` calls
`use_default_attention`), registered with transformers as `ATTENTION`.

torch's CPU flash-attention kernel, which SDPA picks on the CPU, costs about the same below 192
keys whatever the length: its forward and backward took 29-32 ms a layer for 2,048 tokens of
rows of 32 to 160 tokens (the built-in model's 9 heads of 64, bf16, a 2-core Intel Xeon with AMX),
against 9-23 ms for the matmuls and softmax up to 128 keys, and 20-26 ms for the kernel from 192
keys on, where the matmuls fall behind (32 ms at 192, 50 ms at 384) and their rows x heads x
queries x keys probabilities grow with the square of the length. So the matmuls take keys up
to `SHORT_KEYS`; the probabilities they keep for the backward (float32 and bf16, 6 bytes each)
then add at most 9 heads x 128 keys x 6 bytes = 7 KB a token and layer for the built-in model,
bounded by the micro-batch as the rest of the activations are. Everything else (a GPU, longer
keys, a position bias, a paged cache) is transformers' SDPA unchanged, and so are the values: the
masks are SDPA's (`sdpa_mask`), padded and cached rows included (tested against SDPA to float32
rounding, values and gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "sdpa_short_matmuls"
SHORT_KEYS = 128


def takes_matmuls(query_BHQD: Tensor, key_BKSD: Tensor, attention_mask: Tensor | None = None, **kwargs) -> bool:
    """Whether this call runs as matmuls (else transformers' SDPA)."""
    return (
        query_BHQD.device.type == "cpu"
        and key_BKSD.shape[2] <= SHORT_KEYS
        and (attention_mask is None or attention_mask.shape[1] == 1)  # one mask for every head
        and kwargs.get("position_bias") is None
        and kwargs.get("cache") is None
    )


def attention(
    module: torch.nn.Module, query_BHQD: Tensor, key_BKSD: Tensor, value_BKSD: Tensor, attention_mask: Tensor | None,
    dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None, **kwargs,
) -> tuple[Tensor, None]:  # fmt: skip
    """transformers' attention-function signature: `(output_BQHD, None)`. K is the key/value heads
    (with grouped-query attention each serves H / K query heads), S the keys (cached ones included)."""
    if not takes_matmuls(query_BHQD, key_BKSD, attention_mask, **kwargs):
        return sdpa_attention_forward(
            module, query_BHQD, key_BKSD, value_BKSD, attention_mask,
            dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
        )  # fmt: skip
    # Grouped-query attention without repeating the keys and values for every query head: the G
    # query heads that share a key/value head are stacked along the queries (head h is key/value
    # head h // G, as transformers' repeat_kv orders them; M = G x Q), so one batched matmul over
    # the K key/value heads does it, and the backward sums no repeated copies.
    batch, heads, queries, width = query_BHQD.shape
    kv_heads, keys = key_BKSD.shape[1], key_BKSD.shape[2]
    groups = heads // kv_heads
    scaling = width**-0.5 if scaling is None else scaling
    # The scale on the queries, the smaller tensor (rows x heads x queries x width, not x keys).
    query_BKMD = (query_BHQD * scaling).reshape(batch, kv_heads, groups * queries, width)
    scores_BKGQS = torch.matmul(query_BKMD, key_BKSD.transpose(2, 3)).view(batch, kv_heads, groups, queries, keys)
    if attention_mask is None:
        # SDPA's `is_causal`: query i sees keys 0..i (top-left aligned), and only with several queries.
        causal = (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and queries > 1
        allowed = torch.ones(queries, keys, dtype=torch.bool, device=scores_BKGQS.device).tril() if causal else None
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask[:, :, None]  # B x 1 x 1 x Q x S, broadcast over heads
    else:
        scores_BKGQS, allowed = scores_BKGQS + attention_mask[:, :, None], None  # an additive float mask
    if allowed is not None:
        # The dtype's lowest, not -inf: a padded query that sees no key gets uniform weights, not NaN
        # (its output is never used). In place: the matmul's backward does not need its output.
        scores_BKGQS = scores_BKGQS.masked_fill_(~allowed, torch.finfo(scores_BKGQS.dtype).min)
    probs_BKGQS = torch.softmax(scores_BKGQS, dim=-1, dtype=torch.float32).to(query_BHQD.dtype)
    probs_BKGQS = torch.nn.functional.dropout(probs_BKGQS, p=dropout, training=dropout > 0)
    out_BKMD = torch.matmul(probs_BKGQS.view(batch, kv_heads, groups * queries, keys), value_BKSD)
    return out_BKMD.view(batch, heads, queries, width).transpose(1, 2).contiguous(), None


def use_default_attention(model: torch.nn.Module) -> bool:
    """Switch `model` to `ATTENTION` where transformers chose SDPA for it and the model takes
    registered attention functions (remote code may not); whether it did."""
    if model.config._attn_implementation != "sdpa" or not model._supports_attention_backend:
        return False
    model.set_attn_implementation(ATTENTION)
    return True


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
