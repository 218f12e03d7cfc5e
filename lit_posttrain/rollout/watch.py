"""What a run's sampling looks like from the console: a completion cut at `max_new_tokens` scores as
cut off, so a limit too small for the task (a config written for 4-token answers, reused on a
user's reasoning data) looks like a model that cannot learn. `SamplingWatch` says so once, when it
happens, and gives the run's summary its reward and truncation lines."""

from __future__ import annotations

import logging

from torch import Tensor

log = logging.getLogger(__name__)


class SamplingWatch:
    """Per step: the share of completions cut at `max_new_tokens` and the mean reward.

    Args:
        threshold: the share of one step's completions cut at max_new_tokens above which the run says so, once (1.0: never).
    """

    def __init__(self, threshold: float = 0.25) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"truncation_warning is a share of completions, in (0, 1], got {threshold}")
        self.threshold = threshold
        self.history: list[tuple[int, float, float | None]] = []  # (step, truncated share, mean reward)
        self.warned = False

    def update(self, step: int, truncated_B: Tensor, reward_B: Tensor | None, max_new_tokens: int) -> None:
        share = float(truncated_B.float().mean())
        self.history.append((step, share, None if reward_B is None else float(reward_B.float().mean())))
        if share > self.threshold and not self.warned:
            self.warned = True
            log.warning(
                "%.0f%% of step %d's completions were cut at max_new_tokens = %d, and a cut completion scores as "
                "unfinished: if the task's answers are longer, raise it (model.init_args.engine.init_args."
                "max_new_tokens); truncation_warning: 1.0 silences this. `train/truncated` logs the share every step.",
                100 * share, step, max_new_tokens,
            )  # fmt: skip

    def summary(self, last: int = 5) -> list[str]:
        """Lines for the run's summary: the first step's and the mean of the `last` steps'."""
        if not self.history:
            return []
        first, tail = self.history[0], self.history[-last:]
        span = f"step {tail[0][0]}" + (f"-{tail[-1][0]}" if len(tail) > 1 else "")
        lines = [f"  completions cut at max_new_tokens: {first[1]:.0%} at step {first[0]} -> {_mean(s for _, s, _ in tail):.0%} at {span}"]
        if first[2] is not None:
            lines.append(f"  reward: {first[2]:.3f} at step {first[0]} -> {_mean(r for _, _, r in tail):.3f} at {span}")
        return lines


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
