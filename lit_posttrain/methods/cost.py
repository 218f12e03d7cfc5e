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
    and `backward_step_s` (from "backward" to the next "start" or "end"), summed over the step's
    micro-batches, which alternate them; the others are added with `add`.

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
        self.open: tuple[str, float] | None = None  # the timed phase running now and since when

    def add(self, key: str, amount: Tensor | float) -> None:
        if key not in self.totals:
            raise KeyError(f"{self.owner} does not log {key!r}; it logs {sorted(self.totals)}")
        self.totals[key] += float(amount)

    def mark(self, name: str) -> None:
        """"start" a loss forward (an unfinished forward is forgotten: what ran since, sampling, is
        timed as its own phase), "backward" (ends the forward) or "end" (ends the backward and the
        optimizer step). A "start" after a "backward" ends that backward: the next micro-batch."""
        now = self.clock()
        if self.open is not None and not (name == "start" and self.open[0] == "loss_forward_s"):
            self.add(f"time/{self.open[0]}", now - self.open[1])
        self.open = {"start": ("loss_forward_s", now), "backward": ("backward_step_s", now), "end": None}[name]

    def finish(self) -> dict[str, float]:
        """The step's totals with the marked phases added; the tally starts again from zero. A phase
        still running (a step that returned no loss: its forward) runs until now."""
        self.mark("end")
        totals, self.totals = self.totals, dict.fromkeys(self.keys, 0.0)
        return totals


class StepCostHooks:
    """The step-cost tally as a LightningModule mixin: the module's hooks mark the timed phases and
    log every key of the tally when the step ends (`tokens/<kind>` summed over processes,
    `time/<phase>` their mean). A method counts with `count_tokens` and `add_time`, and declares
    what it may count in `token_kinds` and `time_phases`."""

    @property
    def token_kinds(self) -> tuple[str, ...]:
        """Logged every step as `tokens/<kind>`: the tokens each model's forward ran on, summed over
        processes. `trained`: the policy's loss forward (with gradients); `teacher`: the teacher's,
        when there is one; methods that sample add `prompts` (each prompt prefilled once) and
        `generated`. Fixed for a run, so that every process logs the same keys (each is a collective)."""
        return ("trained", "teacher") if self.teacher_folder is not None else ("trained",)

    # Logged every step as `time/<phase>`, in seconds, the mean over processes; the loss forward and
    # backward + optimizer step are timed from the marks, the others are added with `add_time`:
    # `sync_s` is the rollout engine taking the new weights after the optimizer step (any method:
    # an Evaluation callback starts an engine for SFT too).
    time_phases: tuple[str, ...] = ("loss_forward_s", "backward_step_s", "sync_s")

    @property
    def step_cost(self) -> StepCost:
        """This step's tally (made on first use: subclasses' `token_kinds` may read their own settings)."""
        if getattr(self, "_step_cost", None) is None:
            self._step_cost = StepCost(self.token_kinds, self.time_phases, owner=type(self).__name__)
        return self._step_cost

    def count_tokens(self, kind: str, count: Tensor | int) -> None:
        """Add `count` tokens of `kind` (one of `token_kinds`) to this step's `tokens/<kind>`."""
        self.step_cost.add(f"tokens/{kind}", count)

    def add_time(self, phase: str, seconds: float) -> None:
        """Add `seconds` to this step's `time/<phase>` (one of `time_phases`)."""
        self.step_cost.add(f"time/{phase}", seconds)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.step_cost.mark("start")  # methods that sample mark it again once their rollouts are in

    def on_before_backward(self, loss: Tensor) -> None:
        self.step_cost.mark("backward")  # the optimizer step marks "end"; a step without one ends with the batch

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if outputs is not None:
            self.log("train/loss", outputs["loss"].detach(), batch_size=len(batch), sync_dist=True)
        tally = self.step_cost.finish()
        tokens = {k: v for k, v in tally.items() if k.startswith("tokens/")}
        self.log_dict(tokens, reduce_fx="sum", batch_size=len(batch), sync_dist=True)
        self.log_dict({k: v for k, v in tally.items() if k not in tokens}, batch_size=len(batch), sync_dist=True)
