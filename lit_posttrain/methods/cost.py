"""What one training step cost: the tokens each model's forward ran on and the seconds of each
phase, tallied while the step runs and handed to the logger when it ends."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from torch import Tensor


class StepCost:
    """One step's tally of `tokens/<kind>` and `time/<phase>`, every key present from the start.

    The keys are fixed when it is made, so that every process logs the same ones (each logged key
    is a collective) and a misspelt kind fails loudly instead of logging a new column. Two phases
    are timed from marks set by the module's hooks: `loss_forward_s` (from "start" to "backward")
    and `backward_step_s` (from "backward" to "end"); the others are added with `add`.

    Args:
        token_kinds: the `tokens/<kind>` this step may count.
        time_phases: the `time/<phase>` this step may time; must include the two marked ones.
        owner: named in the error for an unknown key.
        clock: seconds, monotonic (injectable for tests).
    """

    marked_phases = ("loss_forward_s", "backward_step_s")

    def __init__(
        self,
        token_kinds: Sequence[str],
        time_phases: Sequence[str],
        owner: str = "this module",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        missing = [p for p in self.marked_phases if p not in time_phases]
        if missing:
            raise ValueError(f"{owner}: time_phases {list(time_phases)} lacks the marked phases {missing}")
        self.keys = [f"tokens/{kind}" for kind in token_kinds] + [f"time/{phase}" for phase in time_phases]
        self.owner, self.clock = owner, clock
        self.totals = dict.fromkeys(self.keys, 0.0)
        self.marks: dict[str, float] = {}

    def add(self, key: str, amount: Tensor | float) -> None:
        if key not in self.totals:
            raise KeyError(f"{self.owner} does not log {key!r}; it logs {sorted(self.totals)}")
        self.totals[key] += float(amount)

    def mark(self, name: str) -> None:
        """Note the time of "start" (which forgets earlier marks), "backward" or "end"."""
        if name == "start":
            self.marks = {}
        self.marks[name] = self.clock()

    def finish(self) -> dict[str, float]:
        """The step's totals with the marked phases added; the tally starts again from zero. A step
        that returned no loss has no backward: its time up to now is all `loss_forward_s`."""
        now = self.clock()
        backward = self.marks.get("backward", now)
        self.add("time/loss_forward_s", backward - self.marks.get("start", backward))
        self.add("time/backward_step_s", self.marks.get("end", now) - backward)
        totals, self.totals, self.marks = self.totals, dict.fromkeys(self.keys, 0.0), {}
        return totals
