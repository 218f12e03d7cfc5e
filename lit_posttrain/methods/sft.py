"""Supervised fine-tuning: the baseline every on-policy method is compared against.

Objective: minimise the token-mean negative log-likelihood of the demonstration given the prompt,
    L = -(1 / N) * sum_{b, t in completion} log pi(o_t | q, o_<t),
with N the number of completion tokens in the whole accumulated batch (all micro-batches, all ranks).

Departures from common implementations:
1. The mean is over every completion token of the optimizer step, not a mean of per-micro-batch
   means: the latter changes with the accumulation setting and weights short examples' tokens more.
2. The completion ends with the EOS token and it is trained on: the model learns to stop.
"""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric

from lit_posttrain.data.batches import Batch
from lit_posttrain.losses import token_mean_nll
from lit_posttrain.methods.base import PostTrainingModule


class SFT(PostTrainingModule):
    """Supervised fine-tuning on the task's demonstrations (see the module docstring)."""

    needs_demonstrations = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Token-weighted means, reduced correctly across processes.
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logp_BT, mask_BT = self.demonstration_logp(batch.rows)
        loss, metrics = token_mean_nll(logp_BT, mask_BT, num_tokens=self.token_normaliser(batch.window_tokens))
        self.log("train/nll", metrics["nll"], prog_bar=True, batch_size=len(batch), sync_dist=True)
        self.log("train/tokens", metrics["tokens"], reduce_fx="sum", batch_size=len(batch), sync_dist=True)
        return loss

    def token_normaliser(self, window_tokens: int) -> float:
        """This micro-batch's share of its accumulation window's token count.

        Lightning divides each micro-batch loss by `accumulate_grad_batches` and data-parallel
        strategies average gradients over ranks; dividing the summed loss by this share undoes both,
        so the window's gradient is exactly the token mean over all of its tokens on all ranks.
        """
        share = self.trainer.accumulate_grad_batches * self.trainer.world_size
        return max(window_tokens, 1) / share

    def _held_out_nll(self, batch: Batch, metric: MeanMetric, name: str) -> None:
        logp_BT, mask_BT = self.demonstration_logp(batch.rows)
        _, metrics = token_mean_nll(logp_BT, mask_BT)
        metric.update(metrics["nll"], weight=metrics["tokens"])
        self.log(name, metric, prog_bar=True, batch_size=len(batch))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._held_out_nll(batch, self.val_nll, "val/nll")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._held_out_nll(batch, self.test_nll, "test/nll")
