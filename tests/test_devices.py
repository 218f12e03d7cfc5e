"""What runs where: a rollout reaches the trainer's device whatever source drew it, and every
number an on-policy step logs with `sync_dist` is on that device, since NCCL reduces no CPU
tensor (both broke the first GPU run: "index is on cpu", "No backend type associated with device
type cpu"). The CPU has no second device, so `meta` stands in for the GPU here."""

from types import SimpleNamespace

import torch
from helpers.steps import offline, tiny_rollout

from lit_posttrain.methods.grpo import GRPO

ELSEWHERE = torch.device("meta")


def tensors(rollout) -> dict:
    return {k: v for k, v in vars(rollout).items() if isinstance(v, torch.Tensor)}


def test_a_rollout_reaches_the_trainers_device_whatever_drew_it():
    rollout, rows = tiny_rollout([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # on the CPU, as a source of the user's may hand it
    module = offline(GRPO, rollout)
    module._device = ELSEWHERE
    moved = module.rollouts_for(SimpleNamespace(rows=rows))
    assert tensors(moved).keys() == tensors(rollout).keys() and len(tensors(moved)) >= 8
    assert all(t.device == ELSEWHERE for t in tensors(moved).values())


def test_every_number_a_step_reduces_over_processes_is_on_the_trainers_device():
    class Captured(GRPO):
        def log(self, name, value, *args, **kwargs):
            pass

        def log_dict(self, values, *args, sync_dist=False, **kwargs):
            self.reduced.update(values if sync_dist else {})

    rollout, _ = tiny_rollout([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    module = Captured(model="tiny-random-llama", dtype="float32", group_size=2)
    module.reduced, module._device = {}, ELSEWHERE
    module._trainer = SimpleNamespace(global_step=0, global_rank=0, world_size=1)
    metrics = {"loss": torch.tensor(0.5), "clip_fraction": torch.tensor(0.0)}
    module.log_rollout_step(rollout, metrics, trained_B=torch.tensor([True, True, False, True, True, True]))
    assert {"train/rows_trained", "train/verifier_errors", "train/reward", "train/loss"} <= module.reduced.keys()
    assert all(v.device == ELSEWHERE for v in module.reduced.values()), {k: v.device for k, v in module.reduced.items()}
