"""A method's training step run outside a Trainer (an on-policy method's fed a prepared rollout):
its gradient is left in `.grad` and its logged metrics in `.logged`, to be checked against values
computed by hand."""

from types import SimpleNamespace

import torch

from lit_posttrain.data.batches import Row
from lit_posttrain.data.task import Example
from lit_posttrain.methods.grpo import GRPO
from lit_posttrain.rollout import HFEngine, Rollout
from lit_posttrain.rollout.source import RolloutSource

PROMPTS = [[5, 20, 21], [5, 30, 31, 32], [5, 40]]
DEMONSTRATIONS = [[7, 8, 2], [9, 2], [10, 11, 12, 2]]  # token 2 ends each, as EOS would


def tiny_rollout(rewards: list[float], age: list[int] | None = None) -> tuple[Rollout, list[Row]]:
    """Two completions for each of PROMPTS, sampled by the tiny model, with the given rewards, and
    the rows they answer (with DEMONSTRATIONS)."""
    module = GRPO(model="tiny-random-llama", dtype="float32", group_size=2)
    module.configure_model()
    engine = HFEngine(max_new_tokens=4)
    engine.setup(module.policy, module.tokenizer)
    rollout = engine.generate(PROMPTS, n=2, seed=0).with_rewards(torch.tensor(rewards))
    age_B = torch.tensor(age if age is not None else [0] * len(rollout))
    rollout = Rollout(**{**rollout.__dict__, "age_B": age_B})
    rows = [Row(Example([{"role": "user", "content": "q"}], answer="a"), p, d) for p, d in zip(PROMPTS, DEMONSTRATIONS, strict=True)]
    return rollout, rows


class Prepared(RolloutSource):
    """A rollout source that hands every step the same prepared rollout."""

    def __init__(self, rollout: Rollout) -> None:
        super().__init__()
        self.rollout = rollout

    def rollouts(self, rows, step, sample, pad_id, any_rank) -> Rollout:
        return self.rollout


def offline(method, rollout: Rollout | None = None, on_step=None, **kwargs):
    """`method` on the tiny model (float32), its logged metrics kept in `.logged`; an on-policy
    method's step is fed `rollout` through its rollout source (groups of 2 unless `kwargs` say).
    Each optimizer step calls `on_step(module)` (default: nothing, the gradient left in `.grad`)."""

    class Logged(method):
        logged: dict = {}

        def log_rollout_step(self, rollout, metrics, trained_B=None):
            self.logged = metrics

        def log(self, name, value, *args, **kwargs):  # Lightning's needs a Trainer
            self.logged = {**self.logged, name: value}

        def log_dict(self, values, *args, **kwargs):
            self.logged = {**self.logged, **values}

        def manual_backward(self, loss):
            loss.backward()

        def step_optimizer(self, push=True):
            if on_step is not None:
                on_step(self)

    kwargs = {"model": "tiny-random-llama", "dtype": "float32", **kwargs}
    if rollout is not None:
        kwargs = {"group_size": 2, "rollouts": Prepared(rollout), **kwargs}
    module = Logged(**kwargs)
    module.configure_model()
    module._trainer = SimpleNamespace(
        world_size=1, global_rank=0, global_step=0, strategy=SimpleNamespace(reduce=lambda t, reduce_op: t)
    )
    return module
