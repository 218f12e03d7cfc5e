"""An optimisation step a module runs itself, a micro-batch of rows at a time: the forward and
backward of each micro-batch (`MicroBatching` packs them) with the loss divided by the whole step's
counts over every process, then one optimizer step. Every shipped method takes its steps this way
(Lightning's manual optimisation), so that a step's memory follows its micro-batch, not its batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lit_posttrain.data.batches import Row
from lit_posttrain.losses.aggregation import Counts
from lit_posttrain.micro_batching import MicroBatching


class MicroBatchedStep:
    """A LightningModule mixin (listed before the module's base class): the module steps its
    optimizer itself. Its `training_step` calls `backward_in_micro_batches` (as often as it has
    losses to add) and then `step_optimizer`; a step that takes no optimizer step is stopped when
    its batch ends. A training row too long for one micro-batch stops the run at start-up.

    Args:
        micro_batching: how many tokens (rows x padded width) and rows one forward and backward pass holds; the step's gradient is the same for any setting (default: 4,096 tokens).
    """

    def __init__(self, *args, micro_batching: MicroBatching | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.micro_batching = micro_batching or MicroBatching()
        # Each micro-batch runs its own backward pass, so the module steps the optimizer itself.
        self.automatic_optimization = False

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and datamodule is not None:
            self.check_rows_fit(datamodule.train_rows)

    def longest_completion(self, row: Row) -> tuple[int, str]:
        """The most completion tokens a training step can hold for `row`, and what bounds them."""
        return len(row.completion_ids or ()), "its demonstration"

    def check_rows_fit(self, rows: list[Row]) -> None:
        """Refuse at start-up a training row whose prompt and longest completion would not fit one
        micro-batch: found mid-run it would stop the run there."""
        for i, row in enumerate(rows):
            completion, bound = self.longest_completion(row)
            if not self.micro_batching.fits(len(row.prompt_ids), completion):
                need = len(row.prompt_ids) + completion
                raise ValueError(
                    f"{row.example.source or f'training row {i}'}: its prompt of {len(row.prompt_ids)} tokens and a "
                    f"completion of up to {completion} ({bound}) make {need} tokens, more than "
                    f"micro_batching.max_tokens = {self.micro_batching.max_tokens}: raise it to at least {need}"
                )

    def step_counts(self, mask_BT: Tensor) -> Counts:
        """The rows and completion tokens of `mask_BT` summed over every process: what a loss over
        part of the step divides by (`backward_in_micro_batches`)."""
        rows, tokens = self.summed_over_processes([mask_BT.shape[0], float(mask_BT.sum())])
        return Counts(rows=int(rows), tokens=tokens)

    def summed_over_processes(self, values: list[float]) -> Tensor:
        """`values` summed over every process (a collective where there are several)."""
        values_K = torch.tensor(values, dtype=torch.float32, device=self.device)
        return self.trainer.strategy.reduce(values_K, reduce_op="sum") if self.trainer.world_size > 1 else values_K

    def backward_in_micro_batches(
        self,
        prompt_B: Sequence[int],
        completion_B: Sequence[int],
        loss_of: Callable[[list[int]], tuple[Tensor, dict[str, Tensor]]],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward and backward of `loss_of(index)` over micro-batches of the rows (row i holds
        `prompt_B[i]` prompt and `completion_B[i]` completion tokens; `self.micro_batching` packs
        them), the gradient accumulating. Returns the summed loss, detached and times the number of
        processes (its mean over them is the step's loss), and the metrics, each micro-batch's
        weighted by its completion tokens (the losses' metrics are token means).

        `loss_of` divides by the whole step's counts over every process (`step_counts`), so that the
        micro-batches' losses add up to one pass's over every row of every process; each is
        multiplied by the number of processes before its backward because DDP and FSDP average
        the gradient over them. Every process runs as many micro-batches as the one with most (each
        backward is a collective, and under FSDP each forward): the extra ones repeat its last
        micro-batch with weight 0."""
        total = torch.zeros((), device=self.device)
        sums: dict[str, Tensor] = {}
        weight = 0.0
        for index, repeated in self.micro_batches(prompt_B, completion_B):
            self.step_cost.mark("start")
            loss, metrics = loss_of(index)
            if repeated:
                self.manual_backward(loss * 0.0)
                continue
            loss = loss * self.trainer.world_size
            self.manual_backward(loss)
            total += loss.detach()
            tokens = float(sum(completion_B[i] for i in index))
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() * tokens
            weight += tokens
        return total, {key: value / max(weight, 1.0) for key, value in sums.items()}

    def demonstration_backward(
        self,
        rows: list[Row],
        loss_of: Callable[[list[int], Tensor], tuple[Tensor, dict[str, Tensor]]],
        counted: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`backward_in_micro_batches` over `rows`' prompts and demonstrations: `loss_of(index,
        num_tokens)` is the loss of rows `index`, `num_tokens` the demonstration tokens of the whole
        step on every process (what a token mean divides each micro-batch's sum by; this process's
        are left out of it unless `counted`: rows run with weight 0 for the others' sake). Returns
        the loss, and the metrics (token means) with the step's `tokens`."""
        prompt_B = [len(row.prompt_ids) for row in rows]
        completion_B = [len(row.completion_ids or ()) for row in rows]
        num_tokens = self.summed_over_processes([sum(completion_B) if counted else 0])[0].clamp(min=1)
        loss, metrics = self.backward_in_micro_batches(prompt_B, completion_B, lambda index: loss_of(index, num_tokens))
        return loss, metrics | {"tokens": num_tokens}

    def micro_batches(self, prompt_B: Sequence[int], completion_B: Sequence[int]) -> list[tuple[list[int], bool]]:
        """This process's micro-batches (row indices), as many as the process with most has: each
        forward under FSDP, and each backward, is a collective. The extra ones repeat the last and
        are marked `True`: their passes run for the others' sake and count for nothing."""
        parts = self.micro_batching.split(prompt_B, completion_B)
        count = len(parts)
        if self.trainer.world_size > 1:
            count = int(self.trainer.strategy.reduce(torch.tensor(float(count), device=self.device), reduce_op="max"))
        return [(parts[min(k, len(parts) - 1)], k >= len(parts)) for k in range(count)]

    def step_optimizer(self, push: bool = True) -> None:
        """One optimizer step on the gradient the micro-batches accumulated, the learning-rate
        schedule's step, then (`push`) the engine takes the new weights: a step followed by
        another before the next sampling can leave that to the last. The `NonFiniteGuard`
        callback, run by the optimizer's step, drops a gradient that is not finite."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        if push:
            self.after_optimizer_step()
        else:
            self.step_cost.mark("end")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._steps_before_batch = self.trainer.global_step

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.trainer.global_step == self._steps_before_batch:
            raise RuntimeError(
                f"{type(self).__name__}.training_step took no optimizer step: an on-policy method runs its "
                "backward passes itself and must call self.step_optimizer() (README.md, 'Adding a method')"
            )
