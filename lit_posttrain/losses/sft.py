"""Supervised fine-tuning's loss: token-mean negative log-likelihood of the completion."""

from __future__ import annotations

import torch
from torch import Tensor


def token_mean_nll(logp_BT: Tensor, mask_BT: Tensor, num_tokens: float | Tensor | None = None) -> tuple[Tensor, dict]:
    """`-sum(mask * logp) / num_tokens`.

    `num_tokens` defaults to this batch's masked-token count. For a micro-batch of a larger step
    pass the whole step's count (`SFT.demonstration_backward`): a mean of per-micro-batch means
    weights a token of a short micro-batch more than a token of a long one, and is not the token
    mean SFT defines.

    Returns the loss and detached metrics: `nll_sum` and `tokens` of this batch (summable across
    batches, so an exact token mean can be reported) and `nll` (this batch's own token mean).
    """
    mask_BT = mask_BT.to(logp_BT.dtype)
    nll_sum = -(logp_BT * mask_BT).sum()
    tokens = mask_BT.sum()
    denominator = tokens.clamp(min=1) if num_tokens is None else torch.as_tensor(num_tokens, dtype=logp_BT.dtype)
    loss = nll_sum / denominator
    metrics = {
        "nll_sum": nll_sum.detach(),
        "tokens": tokens.detach(),
        "nll": (nll_sum / tokens.clamp(min=1)).detach(),
    }
    return loss, metrics
