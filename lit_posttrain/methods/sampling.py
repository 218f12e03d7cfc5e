"""Where an on-policy step's rollouts come from: sampled now with the current weights, reused
from an earlier step, or drawn ahead of training while earlier batches train
(`RolloutSource.max_staleness`), each sampling's tokens and time charged to the step that uses it,
and the source's state (draws done for batches not yet trained among it) kept in checkpoints."""

from __future__ import annotations

import dataclasses
import functools

import torch

from lit_posttrain.data.batches import Batch, Row
from lit_posttrain.rollout import Rollout
from lit_posttrain.rollout.source import RolloutSource


class StepRollouts:
    """An `OnPolicyModule` mixin: `rollouts_for(batch)` is the batch's scored samples, as the
    module's `RolloutSource` decides; `sample_rollouts(rows)` is how the method samples
    (`group_size` a prompt, unless it overrides it).

    Args:
        rollouts: when rollouts are sampled again, reused or drawn ahead of training (default: sampled every step, strictly on-policy); checkpointed with the module.
    """

    def __init__(self, *args, rollouts: RolloutSource | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rollouts = rollouts or RolloutSource()

    def rollouts_for(self, batch: Batch) -> Rollout:
        """This step's rollouts for `batch`, group g answering `batch.rows[g]`: sampled now with the
        current weights, reused, or drawn ahead, as `self.rollouts` decides. The sampling's tokens
        and time are charged to this step."""
        if self.rollouts.max_staleness:
            rollout = self._drawn_ahead(batch)
        else:
            rollout = self.rollouts.rollouts(
                batch.rows, self.trainer.global_step, self._sample_counted, self.tokenizer.pad_token_id, self._any_rank
            )
        # On the trainer's device whatever drew them: a source of the user's may hand CPU tensors.
        rollout = rollout.to(self.device)
        self.step_cost.mark("start")  # the loss forward starts here; sampling is timed as its own phases
        return rollout

    def _drawn_ahead(self, batch: Batch) -> Rollout:
        """The batch's samples drawn ahead (drawn now where none were: the run's first batch), after
        which the next `max_staleness` batches not yet drawn are drawn in the background with the
        current weights, while this batch trains."""
        epoch_loop, step = self.trainer.fit_loop.epoch_loop, self.trainer.global_step
        here = (self.trainer.current_epoch, epoch_loop.batch_idx)
        rollout, waited = self.rollouts.ahead.take(here, batch.rows)
        self.add_time("wait_s", waited)
        rollout = self._count_sampled(batch.rows, rollout if rollout is not None else self._draw(batch.rows, step))
        self.sampler.start(self.policy, self.tokenizer)  # here: the worker must not be the one starting the engine
        for position, rows in self._batches_ahead(here, step):
            if position not in self.rollouts.ahead:
                self.rollouts.ahead.submit(position, rows, functools.partial(self._draw, step=step))
        return rollout

    def _batches_ahead(self, here: tuple[int, int], step: int) -> list[tuple[tuple[int, int], list[Row]]]:
        """The positions and rows of the next `max_staleness` training batches after `here`, those
        the run will reach (within max_steps and max_epochs)."""
        trainer, (epoch, index) = self.trainer, here
        per_epoch, ahead = trainer.num_training_batches, []
        for j in range(1, self.rollouts.max_staleness + 1):
            position = (epoch + (index + j) // per_epoch, (index + j) % per_epoch)
            past_steps = 0 < trainer.max_steps <= step + j * self.optimizer_steps_per_batch
            past_epochs = trainer.max_epochs not in (None, -1) and position[0] >= trainer.max_epochs
            batch = None if past_steps or past_epochs else trainer.datamodule.train_batch_at(*position)
            if batch is None:
                break
            ahead.append((position, batch.rows))
        return ahead

    def after_optimizer_step(self) -> None:
        # The engine takes the new weights only once no draw is in flight: a draw never mixes two
        # versions of the weights, and its samples are the version it was started with.
        self.step_cost.mark("end")
        self.add_time("wait_s", self.rollouts.ahead.settle())
        super().after_optimizer_step()

    def teardown(self, stage: str) -> None:
        self.rollouts.ahead.close()  # before the engine closes
        super().teardown(stage)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.rollouts.max_staleness:
            self.check_drawing_ahead()

    def check_drawing_ahead(self) -> None:
        """Refuse at start-up what drawing samples beside training cannot do: an engine sampling
        from the very weights being trained, a data module that cannot say its next batches."""
        staleness = f"rollouts.max_staleness {self.rollouts.max_staleness} draws samples while the policy trains"
        samples_from_copy = getattr(self.engine, "samples_from_copy", None)
        if samples_from_copy is not None and not samples_from_copy(self.policy):
            raise ValueError(
                f"{staleness}, but {type(self.engine).__name__} samples from the policy itself here (full fine-tuning, "
                "merged_copy false or a sharded policy): use VLLMEngine or VLLMServerEngine (or LoRA with HFEngine's merged copy)"
            )
        if not hasattr(self.trainer.datamodule, "train_batch_at"):
            raise ValueError(f"{staleness}: its data module must say its next batches (train_batch_at, as TaskDataModule does)")

    def on_train_start(self) -> None:
        if self.rollouts.offline:  # charged to step 0
            self.rollouts.sample_all(self.trainer.datamodule.train_rows, self.trainer.global_step, self._sample_counted)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rollouts"] = self.rollouts.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # Checkpoints from before the source moved into the module kept it as a callback's state.
        legacy = [v for k, v in checkpoint.get("callbacks", {}).items() if k.startswith("RolloutRefresh")]
        state = checkpoint.get("rollouts", legacy[0] if legacy else None)
        if state is not None:
            self.rollouts.load_state_dict(state)

    def sample_rollouts(self, rows: list[Row]) -> Rollout:
        """`group_size` scored samples per prompt. Methods that sample differently (another
        temperature, no scoring) override this."""
        return self.sample(rows, n=self.group_size)

    def _sample_counted(self, rows: list[Row]) -> Rollout:
        return self._count_sampled(rows, self._draw(rows, self.trainer.global_step))

    def _draw(self, rows: list[Row], step: int) -> Rollout:
        """`sample_rollouts(rows)` as at optimizer step `step` (its seeds), each row stamped with the
        step whose weights drew it. Thread-safe where the engine samples from its own copy of the
        weights: drawing ahead runs it in a worker thread."""
        with self.seeded_as_step(step):
            rollout = self.sample_rollouts(rows)
        return dataclasses.replace(rollout, version_B=torch.full((len(rollout),), step, dtype=torch.long))

    def _count_sampled(self, rows: list[Row], rollout: Rollout) -> Rollout:
        """Charge a rollout's sampling, its tokens and time, to this step."""
        self.count_tokens("prompts", sum(len(row.prompt_ids) for row in rows))  # each prefilled once for its group
        self.count_tokens("generated", rollout.mask_BT.sum())
        self.add_time("generate_s", rollout.timing.get("generate_s", 0.0))
        self.add_time("score_s", rollout.timing.get("score_s", 0.0))
        return rollout

    def _any_rank(self, flag: bool) -> bool:
        """`flag` on any process, where the processes must sample together (a sharded policy)."""
        return self.trainer.strategy.reduce_boolean_decision(flag, all=False) if self.sharded else flag
