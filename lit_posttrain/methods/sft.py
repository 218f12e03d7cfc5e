"""Supervised fine-tuning: the baseline every on-policy method is compared against.

Objective: minimise the token-mean negative log-likelihood of the demonstration given the prompt,
    L = -(1 / N) * sum_{b, t in completion} log pi(o_t | q, o_<t),
with N the number of completion tokens of the whole optimizer step (`data.batch_size` rows on each
process, all processes). The step runs a micro-batch of rows at a time (`micro_batching`: a token
budget, rows packed longest first), each micro-batch's loss divided by that N.

Departures from common implementations:
1. The mean is over every completion token of the optimizer step, not a mean of per-micro-batch
   means: the latter changes with the micro-batch setting and weights short examples' tokens more.
2. The completion ends with the EOS token and it is trained on: the model learns to stop.
"""

from __future__ import annotations

from torch import Tensor
from torchmetrics import MeanMetric

from lit_posttrain.data.batches import Batch
from lit_posttrain.losses import token_mean_nll
from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.methods.stepping import MicroBatchedStep


class SFT(MicroBatchedStep, PostTrainingModule):
    """Supervised fine-tuning on the task's demonstrations (see the module docstring)."""

    needs_demonstrations = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Token-weighted means, reduced correctly across processes.
        self.val_nll = MeanMetric()
        self.test_nll = MeanMetric()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        rows = batch.rows

        def nll(index: list[int], num_tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            logp_BT, mask_BT = self.demonstration_logp([rows[i] for i in index])
            loss, metrics = token_mean_nll(logp_BT, mask_BT, num_tokens=num_tokens)
            return loss, {"nll": metrics["nll"]}

        loss, metrics = self.demonstration_backward(rows, nll)
        self.step_optimizer()
        self.log("train/nll", metrics["nll"], prog_bar=True, batch_size=len(batch), sync_dist=True)
        self.log("train/tokens", metrics["tokens"], batch_size=len(batch))
        return loss

    def _held_out_nll(self, batch: Batch, metric: MeanMetric, name: str) -> None:
        logp_BT, mask_BT = self.demonstration_logp(batch.rows)
        _, metrics = token_mean_nll(logp_BT, mask_BT)
        metric.update(metrics["nll"], weight=metrics["tokens"])
        self.log(name, metric, prog_bar=True, batch_size=len(batch))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._held_out_nll(batch, self.val_nll, "val/nll")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._held_out_nll(batch, self.test_nll, "test/nll")
