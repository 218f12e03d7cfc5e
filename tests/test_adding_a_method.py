"""The contract for a new method (README.md, "Adding a method"), shown by the smallest on-policy
method there is, REINFORCE with the group's mean reward as baseline, and checked: it trains
through Lightning with nothing else changed."""

import lightning as L
import pytest
import torch
from torch import Tensor

from lit_posttrain.data.arithmetic import Arithmetic
from lit_posttrain.data.batches import Batch
from lit_posttrain.data.datamodule import TaskDataModule
from lit_posttrain.losses.advantages import GroupCentered
from lit_posttrain.losses.aggregation import TokenMean
from lit_posttrain.losses.policy_gradient import Current, NoMask, PolicyGradientLoss
from lit_posttrain.methods.on_policy import OnPolicyModule
from lit_posttrain.optim import Optim


class Reinforce(OnPolicyModule):
    """REINFORCE: grad = E[(r - mean of the group's r) * grad log pi(o)], token mean.

    Departs from the textbook form by nothing but its baseline (the group's mean reward).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Denominator pi (the term is grad log pi), advantage r - group mean, no clip, token mean.
        self.loss = PolicyGradientLoss(Current(), GroupCentered(), NoMask(), TokenMean())

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        rollout = self.rollouts_for(batch)  # sampled now, or reused as the `rollouts:` source decides
        # Forward and backward a micro-batch of rows at a time, each normalised by the whole step.
        loss, metrics, _ = self.policy_gradient_backward(rollout, self.loss)
        self.step_optimizer()
        self.log_rollout_step(rollout, metrics)
        return loss


def _odd_length(completion: str, answer: str) -> float:
    return float(len(completion) % 2)


def test_the_example_method_trains(tmp_path):
    module = Reinforce(model="tiny-random-llama", dtype="float32", group_size=4, optim=Optim(lr=1e-2))
    module.configure_model()  # Lightning calls it again in fit: it builds once
    start = {name: p.detach().clone() for name, p in module.policy.named_parameters()}
    # The tiny random model never solves a sum: a reward that differs within a group makes sure the
    # advantage, hence the gradient, is not zero.
    task = Arithmetic(max_operand=5, num_train=8, num_eval=2, verifier=_odd_length)
    data = TaskDataModule(task=task, batch_size=4)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2
    assert {"train/reward", "train/loss", "tokens/generated", "time/generate_s"} <= trainer.logged_metrics.keys()
    assert trainer.logged_metrics["train/zero_variance_groups"] < 1
    for name, p in module.policy.named_parameters():
        assert not torch.equal(start[name], p) and torch.isfinite(p).all(), name


class Forgetful(Reinforce):
    """Runs its backward passes but never steps the optimizer."""

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss, _, _ = self.policy_gradient_backward(self.rollouts_for(batch), self.loss)
        return loss


def test_a_method_that_takes_no_optimizer_step_is_stopped_saying_so(tmp_path):
    module = Forgetful(model="tiny-random-llama", dtype="float32", group_size=2)
    data = TaskDataModule(task=Arithmetic(max_operand=5, num_train=4, num_eval=2), batch_size=2)
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"Forgetful.training_step took no optimizer step: .* must call self.step_optimizer\(\)"):
        trainer.fit(module, datamodule=data)
