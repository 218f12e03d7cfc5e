"""The cadence the measuring callbacks share: before the first step, every N steps, after the last;
and the measurement before the first step, kept in a file for runs from the same start."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L

from lit_posttrain.atomic import write_json_atomically


def digest(value) -> str:
    """A short stable hash of JSON-able `value` (token ids, items): fingerprints compare these."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def crossed_multiple(trainer: L.Trainer, module, every_n_steps: int) -> bool:
    """Whether the batch just trained took the run past a multiple of `every_n_steps` optimizer
    steps. A batch may take several (ppo_epochs x mini_batches), so a multiple can fall inside it."""
    step = trainer.global_step
    before = getattr(module, "_steps_before_batch", step - 1)
    return step > 0 and step // every_n_steps != before // every_n_steps


class EveryNSteps(L.Callback):
    """Calls `run` before the first optimizer step (the baseline), every `every_n_steps` optimizer
    steps, and after the last one; never twice at the same step.

    With `baseline_cache`, the baseline is kept in that JSON file with a fingerprint of what decides
    it (the starting model, dtype, run seed, the examples, the callback's settings): the first run
    measures and writes it, and a later run with the same fingerprint reads it instead of measuring
    the same starting model again (a comparison of methods from one start measures it once). A file
    with another fingerprint stops the run at start-up, naming what differs.

    The history and the last step measured are saved in every checkpoint: a run resumed from one
    goes on with them, measuring at the same steps as the run that was never interrupted (not again
    at the step it resumes from), and compares with the same first measurement.
    """

    def __init__(self, every_n_steps: int | None, baseline_cache: str | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"{type(self).__name__} every_n_steps must be >= 1 or null, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.baseline_cache = baseline_cache
        self.history: list[dict] = []
        self._last_step: int | None = None
        self._resumed = False

    def run(self, trainer: L.Trainer, module) -> None:
        """Measure now: append to `history` and log."""
        raise NotImplementedError

    def fingerprint(self, trainer: L.Trainer, module) -> dict:
        """What decides the baseline beyond the callback's settings (subclasses add theirs)."""
        return {
            "callback": type(self).__name__,
            "model": str(module.model_folder),
            "dtype": str(module.weight_dtype),
            "seed": os.environ.get("PL_GLOBAL_SEED", "0"),
        }

    def restore(self, trainer: L.Trainer, module, entries: list[dict]) -> None:
        """Take `entries` (the baseline's `history`) as this run's measurement before training."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        # Plain containers: checkpoints load with torch.load(weights_only=True).
        return {"history": self.history, "last_step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        self.history, self._last_step = list(state["history"]), state["last_step"]
        self._resumed = True

    def _run_once(self, trainer: L.Trainer, module) -> None:
        if self._last_step != trainer.global_step:
            self._last_step = trainer.global_step
            self.run(trainer, module)

    def _baseline(self, trainer: L.Trainer, module) -> None:
        path = Path(self.baseline_cache)
        if trainer.world_size > 1:  # each process keeps its own share of the examples
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        fingerprint = self.fingerprint(trainer, module) | {"world_size": trainer.world_size}
        # Every process reads, or every one measures: measuring takes collectives.
        if trainer.strategy.reduce_boolean_decision(path.is_file(), all=True):
            saved = json.loads(path.read_text())
            differs = sorted(k for k in fingerprint.keys() | saved["fingerprint"].keys() if fingerprint.get(k) != saved["fingerprint"].get(k))
            if differs:
                raise ValueError(
                    f"{type(self).__name__} baseline_cache {path} was measured for another start ({', '.join(differs)} "
                    "differ): point this run at another file, or delete it to measure again"
                )
            self._last_step = 0
            self.restore(trainer, module, saved["history"])
            return
        self._run_once(trainer, module)
        write_json_atomically(path, {"fingerprint": fingerprint, "history": self.history})

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        if self._resumed:  # the measurements so far came with the checkpoint; the next is due on cadence
            return
        if self.baseline_cache is not None and trainer.global_step == 0:
            self._baseline(trainer, module)
        else:
            self._run_once(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        if self.every_n_steps and crossed_multiple(trainer, module, self.every_n_steps):
            self._run_once(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        self._run_once(trainer, module)
