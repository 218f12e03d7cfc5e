"""Forgetting, measured while training runs, against the starting model: when the probes of
`lit_posttrain.measurement` run, what is logged, and what a checkpoint keeps."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from lit_posttrain.atomic import write_json_atomically
from lit_posttrain.callbacks.cadence import EveryNSteps, digest
from lit_posttrain.data.batches import Row
from lit_posttrain.data.multiple_choice import load_multiple_choice
from lit_posttrain.measurement import (
    choice_rows,
    kl_to_reference,
    question_row,
    score_choices,
    score_in_forms,
)
from lit_posttrain.metrics import flips
from lit_posttrain.rollout import Rollout


class ForgettingProbes(EveryNSteps):
    """KL to the starting model, general-knowledge accuracy and NLL, and per-example flips.

    Before the first step (the baseline), every `every_n_steps` optimizer steps and after the last:
    - `forget/kl`: KL(policy || reference) per token, over the full vocabulary, along continuations
      the starting model wrote for `kl_prompts` probe questions (outside the training task), and
      `forget/forward_kl`, KL(reference || policy), along the same;
    - with `task_kl_prompts`, `forget/task_kl` and `forget/task_forward_kl`: the same two along the
      starting model's continuations of the training task's first held-out prompts. The forward
      one is what "RL's Razor" (arXiv 2509.04259) found to predict forgetting;
    - `forget/<set>/accuracy` and `forget/<set>/nll` on each multiple-choice set, scored by option
      log-likelihood (no generation); with `answer_forms`, `forget/<set>/accuracy` ranks each
      option by its probability in any of the forms, and each form has its own
      `forget/<set>/<form>/accuracy` and `nll`;
    - `forget/<set>/right_to_wrong` and `wrong_to_right`: items that flipped since the first probe;
    - `time/forget_<probe>_s`: what each probe costs, to choose a cadence by.

    Args:
        every_n_steps: probe every N optimizer steps (null: only before and after training).
        probe_sets: multiple-choice sets: "builtin:general_knowledge" (328 items written for this project) or local .jsonl/.json/.parquet files with question, choices and answer (0-based index).
        kl_prompts: probe questions the KL is measured on, spread evenly through the first set.
        kl_max_new_tokens: length of the starting model's continuations the KL is measured along.
        max_items: score at most this many items per set (null: all).
        task_kl_prompts: held-out prompts of the training task the two KLs are also measured on (0: none).
        batch_size: sequences per forward pass.
        history_file: a JSON file rewritten after every probe with every measurement so far, each item's right or wrong and the right option's NLL included (for paired tests between checkpoints; written by global rank 0).
        baseline_cache: a JSON file that keeps the probes before training for later runs from the same start (see EveryNSteps); the KL's continuations are still sampled by each run's own starting model.
        answer_forms: the forms an option is scored in as the reply, by name, `{choice}` standing for the option's text: e.g. `{bare: "{choice}", sentence: "The answer is {choice}."}`, the training data's own reply form among them (null: the bare text alone). Training that changes how the model phrases answers lowers a bare-text probe without lost knowledge; the forms' sum does not read the move as a loss, but it ranks in the form the model favours, and forms rank differently even for the start: compare each form's accuracy with the start's same form (benchmarks/FORGETTING.md, studies 2 and 3). Each form costs one more scoring pass.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        probe_sets: list[str] | None = None,
        kl_prompts: int = 32,
        kl_max_new_tokens: int = 32,
        max_items: int | None = None,
        task_kl_prompts: int = 0,
        batch_size: int = 64,
        history_file: str | None = None,
        baseline_cache: str | None = None,
        answer_forms: dict[str, str] | None = None,
    ) -> None:
        super().__init__(every_n_steps, baseline_cache)
        if min(kl_prompts, task_kl_prompts, kl_max_new_tokens) < 0:
            raise ValueError("ForgettingProbes kl_prompts, task_kl_prompts and kl_max_new_tokens must be non-negative")
        _check_forms(answer_forms)
        self.answer_forms = answer_forms
        self.kl_prompts, self.kl_max_new_tokens, self.task_kl_prompts = kl_prompts, kl_max_new_tokens, task_kl_prompts
        self.history_file = history_file
        self.max_items, self.batch_size = max_items, batch_size
        # Load now: a missing or malformed probe file stops the run at start-up.
        self.sets = {
            _set_name(source): load_multiple_choice(source, limit=max_items)
            for source in (probe_sets if probe_sets is not None else ["builtin:general_knowledge"])
        }
        self._rows: dict[str, dict[str, list[Row]]] = {}  # set -> answer form -> one row per (item, choice)
        self._kl_rollouts: dict[str, Rollout] = {}  # "kl" (probe questions), "task_kl" (the task's prompts)
        self._prepared = False

    def state_dict(self) -> dict:
        # The starting model's continuations too: after a resume the policy is no longer the
        # starting model, and sampling them again would measure the KL along other text.
        return super().state_dict() | {"kl_rollouts": {name: r.state_dict() for name, r in self._kl_rollouts.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._kl_rollouts = {name: Rollout.from_state_dict(r) for name, r in state.get("kl_rollouts", {}).items()}

    def _prepare(self, trainer: L.Trainer, module) -> None:
        if self._prepared:
            return
        self._prepared = True
        chat, kwargs = _prompt_format(trainer)
        forms = self.answer_forms or {"": "{choice}"}
        self._rows = {
            name: {form: choice_rows(items, module.tokenizer, chat, kwargs, template) for form, template in forms.items()}
            for name, items in self.sets.items()
        }  # fmt: skip
        if self._kl_rollouts:  # restored from a checkpoint
            self._kl_rollouts = {name: r.to(module.device) for name, r in self._kl_rollouts.items()}
            return
        # The starting model's own continuations, sampled before any update: policy == reference.
        prompts = {}
        if self.kl_prompts and self.sets:
            prompts["kl"] = [question_row(item, module.tokenizer, chat) for item in self._kl_items()]
        if self.task_kl_prompts:
            prompts["task_kl"] = self._task_prompts(trainer)
        for name, rows in prompts.items():
            self._kl_rollouts[name] = module.sample(rows, score=False, max_new_tokens=self.kl_max_new_tokens, seed=0)

    def _kl_items(self) -> list:
        """`kl_prompts` questions spread evenly through the first set: the built-in set is ordered
        by topic, and its first 16 are all geography."""
        items = next(iter(self.sets.values()))
        stride = max(1, len(items) // self.kl_prompts)
        return items[::stride][: self.kl_prompts]

    def _task_prompts(self, trainer: L.Trainer) -> list[Row]:
        return trainer.datamodule.eval_rows[: self.task_kl_prompts]

    def run(self, trainer: L.Trainer, module) -> None:
        step = trainer.global_step
        sets = ", ".join(f"{name} ({len(items)} items)" for name, items in self.sets.items())
        rank_zero_info(f"step {step}: forgetting probes: KL to the start, {sets}...")
        self._prepare(trainer, module)
        was_training = module.policy.training
        module.policy.eval()
        result: dict = {"step": step}
        try:
            for name, rollout in self._kl_rollouts.items():
                start = time.perf_counter()
                kl = kl_to_reference(module, rollout)
                prefix = "forget/" if name == "kl" else "forget/task_"
                result |= {f"{prefix}kl": kl["reverse"], f"{prefix}forward_kl": kl["forward"]}
                result[f"time/forget_{name}_s"] = time.perf_counter() - start
            for name, items in self.sets.items():
                start = time.perf_counter()
                if self.answer_forms is None:
                    scored = score_choices(module, items, self._rows[name][""], self.batch_size)
                    result |= _choices_result(f"forget/{name}", scored)
                else:
                    scored = score_in_forms(module, items, self._rows[name], self.batch_size)
                    result |= {f"forget/{name}/accuracy": scored["accuracy"], f"forget/{name}/per_example": scored["per_example"]}
                    for form, in_form in scored["forms"].items():
                        result |= _choices_result(f"forget/{name}/{form}", in_form)
                first = self.history[0][f"forget/{name}/per_example"] if self.history else scored["per_example"]
                result |= {f"forget/{name}/{k}": v for k, v in flips(first, scored["per_example"]).items()}
                result[f"time/forget_{name}_s"] = time.perf_counter() - start
        finally:
            module.policy.train(was_training)
        self.history.append(result)
        self._log(trainer, result)
        self._write_history(trainer)

    def _write_history(self, trainer: L.Trainer) -> None:
        if self.history_file is None or trainer.global_rank != 0:
            return
        write_json_atomically(Path(self.history_file), self.history)

    def _log(self, trainer: L.Trainer, result: dict) -> None:
        logged = {k: v for k, v in result.items() if k != "step" and "/per_example" not in k}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=result["step"])
        rank_zero_info(f"step {result['step']}: " + ", ".join(f"{k} {v:.3f}" for k, v in logged.items() if not k.startswith("time/")))

    def fingerprint(self, trainer: L.Trainer, module) -> dict:
        chat, kwargs = _prompt_format(trainer)
        sets = {name: digest([[item.question, list(item.choices), item.answer] for item in items]) for name, items in self.sets.items()}
        fingerprint = super().fingerprint(trainer, module) | {
            "sets": sets,
            "settings": [chat, self.kl_prompts, self.kl_max_new_tokens, self.batch_size, *([kwargs] if kwargs else [])]
            + ([self.answer_forms] if self.answer_forms else []),  # only then: older caches stay valid
            "kl_questions": digest([item.question for item in self._kl_items()]) if self.kl_prompts and self.sets else None,
        }
        if self.task_kl_prompts:  # only then: an older cache without task prompts stays valid
            fingerprint["task_prompts"] = digest([row.prompt_ids for row in self._task_prompts(trainer)])
        return fingerprint

    def restore(self, trainer: L.Trainer, module, entries: list[dict]) -> None:
        self._prepare(trainer, module)  # now, while the policy is the starting model: the KL's continuations
        for entry in entries:
            self.history.append(entry)
            # Read, not measured: it cost this run nothing.
            self._log(trainer, {k: 0.0 if k.startswith("time/") else v for k, v in entry.items()})
        self._write_history(trainer)


def _choices_result(prefix: str, scored: dict) -> dict:
    return {
        f"{prefix}/accuracy": scored["accuracy"], f"{prefix}/nll": scored["nll"],
        f"{prefix}/per_example": scored["per_example"], f"{prefix}/per_example_nll": scored["per_example_nll"],
    }  # fmt: skip


def _check_forms(answer_forms: dict[str, str] | None) -> None:
    if answer_forms is None:
        return
    if not answer_forms:
        raise ValueError("ForgettingProbes answer_forms is empty: give at least one form, e.g. {bare: '{choice}'}, or null for the bare text alone")
    for name, template in answer_forms.items():
        if not name or "/" in name or name in ("accuracy", "nll", "per_example", "per_example_nll", "right_to_wrong", "wrong_to_right"):
            raise ValueError(f"ForgettingProbes answer_forms: {name!r} cannot name a form (non-empty, no '/', not a metric's name)")
        if "{choice}" not in template:
            raise ValueError(f"ForgettingProbes answer_forms.{name}: {template!r} has no {{choice}} where the option's text goes")


def _prompt_format(trainer: L.Trainer) -> tuple[bool | str, dict]:
    """Whether the probes' questions go through the chat template, and its arguments: as the run's
    data does (an overriding template is already the tokenizer's)."""
    data = trainer.datamodule
    return (data.chat_template, data.chat_template_kwargs) if data is not None else (True, {})


def _set_name(source: str) -> str:
    return source.removeprefix("builtin:") if source.startswith("builtin:") else Path(source).stem
