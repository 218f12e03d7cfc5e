"""Token lists to padded tensors: the one padding loop prompts, completions and demonstrations share."""

from __future__ import annotations

import torch
from torch import Tensor


def pad(ids: list[list[int]], pad_id: int, side: str = "right") -> tuple[Tensor, Tensor]:
    """`(tokens_BT, attention_BT)`: every sequence left-aligned (`side="right"`: padding after it)
    or right-aligned (`side="left"`, as prompts are for generation)."""
    if side not in ("left", "right"):
        raise ValueError(f"pad side must be 'left' or 'right', got {side!r}")
    width = max((len(row) for row in ids), default=0)
    tokens_BT = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention_BT = torch.zeros((len(ids), width), dtype=torch.long)
    for b, row in enumerate(ids):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        tokens_BT[b, span] = torch.tensor(row, dtype=torch.long)
        attention_BT[b, span] = 1
    return tokens_BT, attention_BT


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """`(tokens_BT, attention_BT)` with every prompt right-aligned."""
    return pad(prompt_ids, pad_id, "left")


def right_pad(ids: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """`(tokens_BT, attention_BT)` with every sequence left-aligned."""
    return pad(ids, pad_id, "right")
