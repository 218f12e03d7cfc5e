"""Per-group reductions over a batch's rows (a group: the rows that answer one prompt), written
once for the advantages, the reward statistics, HPT's routing and the rollout bookkeeping."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Reduce = Literal["sum", "mean", "amax", "amin"]


def dense_groups(group_B: Tensor) -> tuple[Tensor, int]:
    """Each row's group renumbered 0..G-1 in order of group id (a Rollout numbers its groups in
    batch order, so this is batch order), and G. Rows of a group need not be contiguous."""
    _, dense_B = torch.unique(group_B, return_inverse=True)
    return dense_B, int(dense_B.max()) + 1 if len(dense_B) else 0


def group_reduce(values_B: Tensor, group_B: Tensor, reduce: Reduce) -> Tensor:
    """`values_G`: the rows' values reduced within each group, groups in `dense_groups` order."""
    return _reduce(values_B.float(), *dense_groups(group_B), reduce)


def group_mean_std(values_B: Tensor, group_B: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's group mean and unbiased standard deviation (0 for a group of one), per row."""
    dense_B, groups = dense_groups(group_B)
    values_B = values_B.float()
    mean_B = _reduce(values_B, dense_B, groups, "mean")[dense_B]
    count_B = _reduce(torch.ones_like(values_B), dense_B, groups, "sum")[dense_B]
    sq_B = _reduce((values_B - mean_B) ** 2, dense_B, groups, "sum")[dense_B]
    return mean_B, (sq_B / (count_B - 1).clamp(min=1)).sqrt()


def _reduce(values_B: Tensor, dense_B: Tensor, groups: int, reduce: Reduce) -> Tensor:
    if reduce in ("sum", "mean"):
        sum_G = values_B.new_zeros(groups).index_add_(0, dense_B, values_B)
        if reduce == "sum":
            return sum_G
        return sum_G / values_B.new_zeros(groups).index_add_(0, dense_B, torch.ones_like(values_B))
    start = -float("inf") if reduce == "amax" else float("inf")
    return values_B.new_full((groups,), start).scatter_reduce(0, dense_B, values_B, reduce)
