"""HPT's mixing of its two losses: a pure function of the losses and how many prompts each covers."""

from __future__ import annotations

from torch import Tensor


def prompt_weights(n_sft: int, n_rl: int) -> tuple[float, float]:
    """The weights of `prompt_weighted`'s two losses, for a step that adds them up in parts."""
    if n_sft + n_rl == 0:
        raise ValueError("HPT's mixed loss needs at least one prompt")
    return n_sft / (n_sft + n_rl), n_rl / (n_sft + n_rl)


def prompt_weighted(sft_loss: Tensor, n_sft: int, rl_loss: Tensor, n_rl: int) -> Tensor:
    """`(n_sft * L_sft + n_rl * L_rl) / (n_sft + n_rl)`: every prompt weighs the same, whichever
    loss it was routed to. A side with no prompt contributes 0 (its loss, if given, counts 0)."""
    w_sft, w_rl = prompt_weights(n_sft, n_rl)
    return w_sft * sft_loss + w_rl * rl_loss
