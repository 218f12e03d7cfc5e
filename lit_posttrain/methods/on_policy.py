"""What every method that trains on its own samples shares: rollouts delivered by the
`RolloutRefresh` callback, rollout statistics and timing in the logs, held-out accuracy as the
validation metric."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from lit_posttrain.callbacks.rollout_refresh import RolloutRefresh
from lit_posttrain.data.datamodule import Batch, Row
from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.rollout import Rollout


class OnPolicyModule(PostTrainingModule):
    """Base of the on-policy methods: `self.rollout` holds the current step's rollouts.

    Args:
        group_size: completions sampled per prompt.
    """

    def __init__(self, *args, group_size: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        self.group_size = group_size
        self.rollout: Rollout | None = None  # set by RolloutRefresh before every step

    def default_callbacks(self) -> list:
        # Rollouts reach the module through RolloutRefresh: strictly on-policy unless the run's
        # configuration chose another cadence.
        return [*super().default_callbacks(), RolloutRefresh()]

    def sample_rollouts(self, rows: list[Row]) -> Rollout:
        """The rollouts RolloutRefresh asks for: `group_size` scored samples per prompt. Methods
        that sample differently (another temperature, no scoring) override this."""
        return self.sample(rows, n=self.group_size)

    # --- logging ------------------------------------------------------------------------------

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_before_backward(self, loss: Tensor) -> None:
        self._backward_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: Batch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        # Backward and the optimizer step run between the loss and this hook.
        self.log("time/backward_step_s", time.perf_counter() - self._backward_start, batch_size=len(batch), sync_dist=True)

    def log_rollout_step(self, rollout: Rollout, metrics: dict[str, Tensor], trained_B: Tensor | None = None) -> None:
        """Log the rollouts' statistics, token counts and the step's time split with `metrics`."""
        trained_B = torch.ones(len(rollout), dtype=torch.bool) if trained_B is None else trained_B.cpu()
        values = {
            "train/completion_length": rollout.completion_lengths_B.float().mean(),
            "train/truncated": rollout.truncated_B.float().mean(),
            "train/rows_trained": trained_B.float().mean(),
            # Throughput: each prompt is prefilled once; the loss forward runs each trained
            # group's prompt once plus its trained completions.
            "tokens/prompts": prompt_tokens(rollout, torch.ones_like(trained_B)),
            "tokens/generated": rollout.mask_BT.sum().float(),
            "tokens/trained": prompt_tokens(rollout, trained_B) + rollout.mask_BT[trained_B.to(rollout.mask_BT.device)].sum(),
            "time/generate_s": torch.tensor(rollout.timing.get("generate_s", 0.0)),
            "time/score_s": torch.tensor(rollout.timing.get("score_s", 0.0)),
            # RolloutRefresh samples before this module's on_train_batch_start: this is the loss alone.
            "time/loss_forward_s": torch.tensor(time.perf_counter() - self._step_start),
            **{f"train/{k}": v for k, v in metrics.items()},
        }
        if rollout.reward_B is not None:
            values.update(reward_statistics(rollout))
            values["train/verifier_errors"] = torch.tensor(float(self.scorer.failures.errors))
            values["train/verifier_timeouts"] = torch.tensor(float(self.scorer.failures.timeouts))
            self.log("reward", values["train/reward"], prog_bar=True, batch_size=len(rollout), logger=False)
        # sync_dist: every logged number is the mean over all processes, not rank 0's share.
        self.log_dict(values, batch_size=len(rollout), sync_dist=True)

    # --- held-out accuracy --------------------------------------------------------------------

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        result = self.evaluate(batch.rows)
        self.log("val/accuracy", result["accuracy"], prog_bar=True, batch_size=len(batch), sync_dist=True)
        self.log("val/completion_length", result["completion_length"], batch_size=len(batch), sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        result = self.evaluate(batch.rows)
        self.log("test/accuracy", result["accuracy"], batch_size=len(batch), sync_dist=True)


def reward_statistics(rollout: Rollout) -> dict[str, Tensor]:
    _, group_B = torch.unique(rollout.group_B, return_inverse=True)
    groups = int(group_B.max()) + 1
    reward_B = rollout.reward_B.cpu()
    group_B = group_B.cpu()
    max_G = torch.full((groups,), -float("inf")).scatter_reduce(0, group_B, reward_B, "amax")
    min_G = torch.full((groups,), float("inf")).scatter_reduce(0, group_B, reward_B, "amin")
    return {
        "train/reward": reward_B.mean(),
        "train/reward_std": reward_B.std() if len(reward_B) > 1 else torch.tensor(0.0),
        "train/zero_variance_groups": (max_G == min_G).float().mean(),
    }


def prompt_tokens(rollout: Rollout, rows_B: Tensor) -> Tensor:
    """Prompt tokens of the groups that have a row in `rows_B`, each prompt counted once."""
    group_B = rollout.group_B.cpu()
    first_of_group = torch.searchsorted(group_B, group_B[rows_B].unique())
    return rollout.attention_BT[first_of_group.to(rollout.attention_BT.device), : rollout.prompt_width].sum().float()
