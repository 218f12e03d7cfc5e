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
    `max_in_row` of them in a row stop the run with the step and the likely causes. A step taken
    logs the gradient's norm (`train/grad_norm`) and the learning rate (`train/lr`).

    Args:
        max_in_row: consecutive skipped steps after which the run stops.
    """

    def __init__(self, max_in_row: int = 5) -> None:
        if max_in_row < 1:
            raise ValueError(f"NonFiniteGuard max_in_row must be at least 1, got {max_in_row}")
        self.max_in_row = max_in_row
        self.skipped = 0
        self.in_row = 0

    @staticmethod
    def total_norm(trainer: L.Trainer, params: list, norms_N: torch.Tensor) -> torch.Tensor:
        """The whole gradient's L2 norm (no clipping is applied: this is the norm the step uses).
        A sharded gradient's shards are summed over the processes; a replicated one (DDP, or a
        parameter FSDP left whole) is the same on each and counted once."""
        sharded_N = torch.tensor([isinstance(p.grad, DTensor) for p in params], dtype=torch.bool, device=norms_N.device)
        squares_N = norms_N.pow(2)
        sharded = squares_N[sharded_N].sum()
        if bool(sharded_N.any()) and trainer.world_size > 1:
            sharded = trainer.strategy.reduce(sharded, reduce_op="sum")
        return (squares_N[~sharded_N].sum() + sharded).sqrt()

    def on_before_optimizer_step(self, trainer: L.Trainer, module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # One fused norm per tensor, then one check: inf and NaN both survive a norm. A sharded
        # gradient is checked on this rank's shard, and every rank takes the decision together:
        # one rank stepping while another skips would leave their weights apart.
        grads = [g.to_local() if isinstance(g, DTensor) else g for g in (p.grad for p in params)]
        norms_N = torch.stack(torch._foreach_norm(grads)).float() if grads else torch.zeros(0)
        finite = bool(torch.isfinite(norms_N).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            self.in_row = 0
            module.log("train/grad_norm", self.total_norm(trainer, params, norms_N))
            module.log("train/lr", float(optimizer.param_groups[0]["lr"]))
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

