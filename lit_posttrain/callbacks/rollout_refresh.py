"""`RolloutRefresh`, once the callback that decided when rollouts were sampled again; the cadence is
now the on-policy module's own `rollouts:` argument (`lit_posttrain.rollout.source.RolloutSource`),
checkpointed with the module. Kept so that a configuration naming it stops with what to write
instead, rather than with an unknown class path."""

from __future__ import annotations

import lightning as L


class RolloutRefresh(L.Callback):
    """Moved: set the on-policy method's `rollouts:` instead (this callback refuses to start).

    Args:
        every_n_steps: the cadence to move to `model.init_args.rollouts.every_n_steps`.
        batch_size: the batch size to move to `model.init_args.rollouts.batch_size`.
    """

    def __init__(self, every_n_steps: int | None = 1, batch_size: int = 32) -> None:
        raise ValueError(
            "RolloutRefresh is no longer a callback: the on-policy method owns its rollouts. Remove it from "
            "trainer.callbacks and set the method's cadence instead, in YAML\n"
            f"  model:\n    init_args:\n      rollouts: {{every_n_steps: {_yaml(every_n_steps)}, batch_size: {batch_size}}}\n"
            "or on the command line: " + _flag(every_n_steps)
        )


def _yaml(value: int | None) -> str:
    return "null" if value is None else str(value)


def _flag(every_n_steps: int | None) -> str:
    # jsonargparse reads a nested `null` from the command line as the string "None": JSON it is.
    if every_n_steps is None:
        return """--model.init_args.rollouts '{"every_n_steps": null}'"""
    return f"--model.init_args.rollouts.every_n_steps {every_n_steps}"
