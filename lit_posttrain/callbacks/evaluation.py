"""Held-out evaluation during training, step 0 included: the baseline every later number is read
against. The measuring is `lit_posttrain.measurement.generation_scores`; this callback decides when,
shares the examples among processes, reduces and logs the metrics, and keeps their history."""

from __future__ import annotations

import re
import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric, SumMetric

from lit_posttrain.callbacks.cadence import EveryNSteps, digest
from lit_posttrain.data.batches import Row
from lit_posttrain.data.task import Task
from lit_posttrain.measurement import generation_scores
from lit_posttrain.metrics import flips
from lit_posttrain.rewards import Verifier

MAIN = "held_out"  # the training task's held-out split


def metric_name(task_name: str) -> str:
    return re.sub(r"[^\w.+-]+", "_", task_name).strip("_")


class Evaluation(EveryNSteps):
    """Greedy accuracy, unbiased pass@k, completion length and truncation rate on held-out Tasks.

    Runs before the first step, every `every_n_steps` optimizer steps, and after the last step, on
    the training task's held-out split and on any further `tasks`. Each process evaluates its own
    share of the examples; the metrics are torchmetrics objects, reduced across processes. Logged
    as `eval/<metric>` for the training task and `eval/<task>/<metric>` for the others; every
    result, per-example correctness included, is kept in `history`, and right-to-wrong and
    wrong-to-right flips since the first evaluation are counted example by example.

    Args:
        tasks: further tasks to evaluate on their held-out examples (the training task's held-out split always is).
        every_n_steps: evaluate every N optimizer steps (null: only before and after training).
        max_examples: evaluate at most this many examples of each task (null: all of them).
        samples: completions sampled per prompt for pass@k (0: greedy accuracy only).
        k: the k of each pass@k reported; each must be at most `samples`.
        temperature: sampling temperature of the pass@k samples.
        temperatures: further temperatures, at each of which `samples` completions per prompt are drawn and their mean accuracy logged as `pass@1_T<t>` (how good the model is at its best temperature, not only greedy).
        verifiers: further verifiers by name, each scoring the same greedy completions, logged as `accuracy_<name>` (e.g. `final_number: NumericMatch(extract: last)` beside a strict task verifier: the arithmetic right whatever the format).
        max_new_tokens: longest completion while evaluating (null: the engine's, as in training). Longer
            than training's lets a verbose starting model finish its reply, so that a lenient
            verifier (`final_number`) scores its arithmetic rather than where the reply was cut.
        batch_size: prompts per generation call.
        baseline_cache: a JSON file that keeps the evaluation before training for later runs from the same start (see EveryNSteps).
    """

    def __init__(
        self,
        tasks: list[Task] | None = None,
        every_n_steps: int | None = None,
        max_examples: int | None = None,
        samples: int = 0,
        k: list[int] | None = None,
        temperature: float = 1.0,
        temperatures: list[float] | None = None,
        verifiers: dict[str, Verifier] | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 64,
        baseline_cache: str | None = None,
    ) -> None:
        super().__init__(every_n_steps, baseline_cache)
        k = k if k is not None else ([1, samples] if samples > 1 else [1] if samples else [])
        if samples < 0 or any(not 1 <= kk <= samples for kk in k):
            raise ValueError(f"Evaluation pass@k needs 1 <= k <= samples for every k, got k={k}, samples={samples}")
        self.tasks, self.max_examples = tasks or [], max_examples
        self.samples, self.k = samples, sorted(set(k))
        self.temperatures = sorted(set(temperatures or []))
        if self.temperatures and (samples < 1 or self.temperatures[0] <= 0):
            raise ValueError(f"Evaluation temperatures need samples >= 1 and temperatures > 0, got samples={samples}, temperatures={temperatures}")
        self.temperature, self.batch_size = temperature, batch_size
        self.verifiers = dict(verifiers or {})
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"Evaluation max_new_tokens must be at least 1 (or null: the engine's), got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self._rows: dict[str, tuple[Task, list[Row], int, int]] = {}  # task, all rows, rank, world
        self._metrics: dict[str, MeanMetric | SumMetric] = {}

    def setup(self, trainer: L.Trainer, module, stage: str) -> None:
        names = ["accuracy", "completion_length", "truncated", *(f"pass@{k}" for k in self.k)]
        names += [f"pass@1_T{t:g}" for t in self.temperatures] + [f"accuracy_{name}" for name in self.verifiers]
        self._metrics = {name: MeanMetric(sync_on_compute=True) for name in names}
        self._metrics |= {name: SumMetric(sync_on_compute=True) for name in ("right_to_wrong", "wrong_to_right")}

    def _prepare(self, trainer: L.Trainer, module) -> None:
        if self._rows:
            return
        data = trainer.datamodule
        rank, world = trainer.global_rank, trainer.world_size
        self._rows[MAIN] = (data.task, data.eval_rows[: self.max_examples], rank, world)
        for task in self.tasks:
            rows, _ = data.tokenize(task.eval_examples()[: self.max_examples], f"task {task.name!r} eval split")
            self._rows[metric_name(task.name)] = (task, rows, rank, world)

    def run(self, trainer: L.Trainer, module) -> None:
        step = trainer.global_step
        self._prepare(trainer, module)
        for name, (task, rows, rank, world) in self._rows.items():
            # Said before, not only after: the first evaluation can take a minute and more.
            sampled = f", {self.samples} samples each" if self.samples else ""
            rank_zero_info(f"step {step}: evaluating {name} ({len(rows)} examples, greedy{sampled})...")
            start = time.perf_counter()
            # Under FSDP every rank must make as many generation calls as the one with most rows.
            calls = self._calls(-(-len(rows) // world)) if module.sharded else 0
            result = self._evaluate_task(module, name, task, rows[rank::world], calls, filler=rows[:1])
            result.update(step=step, task=name, time_s=time.perf_counter() - start)
            self.history.append(result)
            self._log(trainer, result)

    def _log(self, trainer: L.Trainer, result: dict) -> None:
        name = result["task"]
        prefix = "eval/" if name == MAIN else f"eval/{name}/"
        logged = {f"{prefix}{k}": v for k, v in result.items() if k not in ("step", "task", "per_example")}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=result["step"])
        others = ", ".join(f"{v} {result[f'accuracy_{v}']:.3f}" for v in self.verifiers)
        rank_zero_info(f"step {result['step']}: {name} accuracy {result['accuracy']:.3f}" + (f" ({others})" if others else ""))

    def fingerprint(self, trainer: L.Trainer, module) -> dict:
        self._prepare(trainer, module)
        # The sampling settings, not the engine's state (which changes once it is set up).
        engine = {k: getattr(module.engine, k, None) for k in ("max_new_tokens", "temperature", "top_k", "top_p")}
        fingerprint = super().fingerprint(trainer, module) | {
            "examples": {name: digest([row.prompt_ids for row in rows]) for name, (_, rows, _, _) in self._rows.items()},
            "settings": [self.samples, self.k, self.temperature, self.temperatures, self.batch_size],
            "engine": [type(module.engine).__name__, engine],
        }
        if self.max_new_tokens is not None:  # likewise
            fingerprint["max_new_tokens"] = self.max_new_tokens
        if self.verifiers:  # only then: a cache measured without them stays valid for runs without them
            fingerprint["verifiers"] = sorted((name, repr(verifier)) for name, verifier in self.verifiers.items())
        return fingerprint

    def restore(self, trainer: L.Trainer, module, entries: list[dict]) -> None:
        self._prepare(trainer, module)
        for entry in entries:
            self.history.append(entry)
            self._log(trainer, entry | {"time_s": 0.0})  # read, not measured: it cost this run nothing

    def _calls(self, num_rows: int) -> int:
        return -(-num_rows // self.batch_size)

    @torch.no_grad()
    def _evaluate_task(
        self, module, name: str, task: Task, rows: list[Row], calls: int = 0, filler: list[Row] = ()
    ) -> dict:
        """Evaluate this rank's `rows`, making at least `calls` calls: shares differ by one row at
        most, yet that can be one call more on some ranks, whose forward passes the others then
        join with a throw-away `filler` row."""
        metrics = {name: metric.to(module.device) for name, metric in self._metrics.items()}
        settings = {"samples": self.samples, "k": self.k, "temperature": self.temperature, "temperatures": self.temperatures,
                    "verifiers": self.verifiers, "max_new_tokens": self.max_new_tokens}  # fmt: skip
        for _ in range(calls - self._calls(len(rows))):
            generation_scores(module, task, list(filler), **settings)
        correct = []
        for start in range(0, len(rows), self.batch_size):
            scores = generation_scores(module, task, rows[start : start + self.batch_size], **settings)
            correct += scores.pop("correct").bool().tolist()
            scores["accuracy"] = scores.pop("reward")  # a graded verifier's mean reward
            for key, values in scores.items():
                metrics[key].update(values.to(module.device))
        first = next((h["per_example"] for h in self.history if h["task"] == name), None)
        changed = flips(first, correct) if first is not None else {"right_to_wrong": 0, "wrong_to_right": 0}
        metrics["right_to_wrong"].update(changed["right_to_wrong"])
        metrics["wrong_to_right"].update(changed["wrong_to_right"])
        # compute() reduces across processes: every process calls it, in the same order.
        result = {name: metric.compute().item() for name, metric in metrics.items()}
        for metric in metrics.values():
            metric.reset()
        result["per_example"] = correct
        return result
