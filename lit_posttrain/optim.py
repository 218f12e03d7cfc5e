"""The optimizer settings every method shares: AdamW with linear warm-up and an optional decay."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.optim.lr_scheduler import LambdaLR


@dataclass
class Optim:
    """AdamW with linear warm-up and an optional decay.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        betas: AdamW's moment coefficients.
        eps: AdamW's epsilon.
        warmup_steps: optimizer steps of linear warm-up from 0 to lr.
        decay: shape of the learning rate after warm-up: "constant", "linear" or "cosine" (to min_lr_ratio * lr at the last step).
        min_lr_ratio: final learning rate as a fraction of lr, for "linear" and "cosine".
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    decay: Literal["constant", "linear", "cosine"] = "constant"
    min_lr_ratio: float = 0.0


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, decay: str, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def configure_adamw(params: Iterable[torch.nn.Parameter], opt: Optim, total_steps: int) -> dict:
    """AdamW over `params` with `opt`'s schedule over `total_steps`, as Lightning's
    `configure_optimizers` returns it (the schedule stepped every optimizer step)."""
    params = list(params)
    if not params:
        raise ValueError("the policy has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
    scheduler = LambdaLR(
        optimizer, lambda step: lr_multiplier(step, opt.warmup_steps, total_steps, opt.decay, opt.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
