"""Losses: pure functions of tensors that return `(loss, metrics)`. They never call a model or read
module state, so each is tested against hand-computed values."""

from lit_posttrain.losses.sft import token_mean_nll

__all__ = ["token_mean_nll"]
