"""Skip an optimizer step whose gradient is not finite, and stop a run that keeps producing them."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.distributed.tensor import DTensor


class NonFiniteGuard(L.Callback):
    """Before each optimizer step, check the gradient (a non-finite loss makes it non-finite too).
    If any element is inf or NaN the step is skipped: the gradients are dropped, so AdamW leaves
    the weights and its moments untouched. Skipped steps are counted (`train/skipped_steps`);
    `max_in_row` of them in a row stop the run with the step and the likely causes.

    Args:
        max_in_row: consecutive skipped steps after which the run stops.
    """

    def __init__(self, max_in_row: int = 5) -> None:
        if max_in_row < 1:
            raise ValueError(f"NonFiniteGuard max_in_row must be at least 1, got {max_in_row}")
        self.max_in_row = max_in_row
        self.skipped = 0
        self.in_row = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # One fused norm per tensor, then one check: inf and NaN both survive a norm. A sharded
        # gradient is checked on this rank's shard, and every rank takes the decision together:
        # one rank stepping while another skips would leave their weights apart.
        grads = [g.to_local() if isinstance(g, DTensor) else g for g in (p.grad for p in params)]
        finite = not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            self.in_row = 0
            return
        for p in params:
            p.grad = None
        self.skipped += 1
        self.in_row += 1
        module.log("train/skipped_steps", float(self.skipped))
        rank_zero_warn(f"step {trainer.global_step}: non-finite gradient, optimizer step skipped ({self.in_row} in a row)")
        if self.in_row >= self.max_in_row:
            raise RuntimeError(
                f"{self.in_row} optimizer steps in a row, up to step {trainer.global_step}, had a non-finite loss or "
                "gradient; the run stops rather than train on garbage. Likely causes: a learning rate too high, "
                "float16 overflow (use bfloat16 or float32), a reward or advantage that is inf or NaN, or a "
                "corrupt batch. Raise NonFiniteGuard.max_in_row to tolerate longer streaks."
            )
