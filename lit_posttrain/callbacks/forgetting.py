"""Forgetting, measured while training runs, against the starting model."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_posttrain.callbacks.cadence import EveryNSteps, digest
from lit_posttrain.data.datamodule import Row, tokenize_prompt
from lit_posttrain.data.multiple_choice import MultipleChoiceItem, load_multiple_choice
from lit_posttrain.data.task import Example
from lit_posttrain.logprobs import forward_logits, shared_prompt_logp
from lit_posttrain.losses.distillation import generalized_jsd
from lit_posttrain.metrics import flips
from lit_posttrain.rollout import Rollout
from lit_posttrain.rollout.engine import left_pad, right_pad


def question_row(item: MultipleChoiceItem, tokenizer, chat_template: bool = True) -> Row:
    """The item's question as a user turn, tokenized as a prompt."""
    example = Example([{"role": "user", "content": item.question}], source=item.source)
    return Row(example, tokenize_prompt(tokenizer, example, chat_template), None)


def choice_rows(items: list[MultipleChoiceItem], tokenizer, chat_template: bool = True) -> list[Row]:
    """One row per (item, choice): the question as a user turn, the choice as the reply to score."""
    rows = []
    for item in items:
        question = question_row(item, tokenizer, chat_template)
        for choice in item.choices:
            rows.append(Row(question.example, question.prompt_ids, tokenizer(choice, add_special_tokens=False)["input_ids"]))
    return rows


def item_batches(items: list[MultipleChoiceItem], batch_size: int) -> list[tuple[int, int]]:
    """`(first item, end item)` ranges of whole items with at most `batch_size` choices each (one
    item alone when it has more)."""
    batches, first, choices = [], 0, 0
    for i, item in enumerate(items):
        if choices and choices + len(item.choices) > batch_size:
            batches.append((first, i))
            first, choices = i, 0
        choices += len(item.choices)
    return batches + [(first, len(items))] if items else batches


@torch.no_grad()
def score_choices(module, items: list[MultipleChoiceItem], rows: list[Row], batch_size: int = 64) -> dict:
    """Pick each item's likeliest choice by summed log-likelihood of its tokens. Returns accuracy,
    the mean per-token NLL of the right choices, and per-item correctness.

    `rows` are `choice_rows(items)`: one per choice, the item's question as the prompt. The question
    runs once per item and its key/value cache is shared by the item's choices, which are a few
    tokens against a question of dozens: about a quarter of the work of scoring each row in full."""
    sums, counts = [], []
    starts = [0]
    for item in items:
        starts.append(starts[-1] + len(item.choices))
    for first, end in item_batches(items, batch_size):
        batch = rows[starts[first] : starts[end]]
        prompt_PT, prompt_attention_PT = left_pad([rows[starts[i]].prompt_ids for i in range(first, end)], module.tokenizer.pad_token_id)
        group_R = torch.repeat_interleave(torch.tensor([len(items[i].choices) for i in range(first, end)]))
        choice_RC, choice_attention_RC = right_pad([row.completion_ids for row in batch], module.tokenizer.pad_token_id)
        tokens_RT = torch.cat([prompt_PT[group_R], choice_RC], 1).to(module.device)
        attention_RT = torch.cat([prompt_attention_PT[group_R], choice_attention_RC], 1).to(module.device)
        logp_RT = shared_prompt_logp(module.policy, tokens_RT, attention_RT, group_R.to(module.device), prompt_PT.shape[1])
        sums += logp_RT.sum(-1).tolist()
        counts += choice_attention_RC.sum(-1).tolist()
    correct, nll = [], []
    offset = 0
    for item in items:
        scores = sums[offset : offset + len(item.choices)]
        correct.append(max(range(len(scores)), key=scores.__getitem__) == item.answer)
        nll.append(-scores[item.answer] / max(counts[offset + item.answer], 1))
        offset += len(item.choices)
    return {"accuracy": sum(correct) / len(correct), "nll": sum(nll) / len(nll), "per_example": correct}


@torch.no_grad()
def kl_to_reference(module, rollout: Rollout) -> float:
    """Mean per-token KL(policy || reference) over the full vocabulary, at every completion position
    of `rollout` (continuations the starting model wrote): exact at each position, no sampling noise."""
    width, tokens_BT, attention_BT = rollout.prompt_width, rollout.tokens_BT, rollout.attention_BT
    keep, predicts_BS = tokens_BT.shape[1] - width + 1, rollout.mask_BT[:, width:]
    policy_NV = forward_logits(module.policy, tokens_BT, attention_BT, keep)[:, :-1][predicts_BS]
    with module.reference() as reference:
        reference_NV = forward_logits(reference, tokens_BT, attention_BT, keep)[:, :-1][predicts_BS]
    return generalized_jsd(policy_NV, reference_NV, beta=1.0).mean().item()  # beta 1: KL(policy || reference)


class ForgettingProbes(EveryNSteps):
    """KL to the starting model, general-knowledge accuracy and NLL, and per-example flips.

    Before the first step (the baseline), every `every_n_steps` optimizer steps and after the last:
    - `forget/kl`: KL(policy || reference) per token, over the full vocabulary, along continuations
      the starting model wrote for `kl_prompts` probe questions (outside the training task);
    - `forget/<set>/accuracy` and `forget/<set>/nll` on each multiple-choice set, scored by option
      log-likelihood (no generation);
    - `forget/<set>/right_to_wrong` and `wrong_to_right`: items that flipped since the first probe;
    - `time/forget_<probe>_s`: what each probe costs, to choose a cadence by.

    Args:
        every_n_steps: probe every N optimizer steps (null: only before and after training).
        probe_sets: multiple-choice sets: "builtin:general_knowledge" (328 items written for this project) or local .jsonl/.json/.parquet files with question, choices and answer (0-based index).
        kl_prompts: probe questions (from the first set) the KL is measured on.
        kl_max_new_tokens: length of the starting model's continuations the KL is measured along.
        max_items: score at most this many items per set (null: all).
        batch_size: sequences per forward pass.
        baseline_cache: a JSON file that keeps the probes before training for later runs from the same start (see EveryNSteps); the KL's continuations are still sampled by each run's own starting model.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        probe_sets: list[str] | None = None,
        kl_prompts: int = 32,
        kl_max_new_tokens: int = 32,
        max_items: int | None = None,
        batch_size: int = 64,
        baseline_cache: str | None = None,
    ) -> None:
        super().__init__(every_n_steps, baseline_cache)
        self.kl_prompts, self.kl_max_new_tokens = kl_prompts, kl_max_new_tokens
        self.max_items, self.batch_size = max_items, batch_size
        # Load now: a missing or malformed probe file stops the run at start-up.
        self.sets = {
            _set_name(source): load_multiple_choice(source, limit=max_items)
            for source in (probe_sets if probe_sets is not None else ["builtin:general_knowledge"])
        }
        self._rows: dict[str, list[Row]] = {}
        self._kl_rollout: Rollout | None = None

    def _prepare(self, trainer: L.Trainer, module) -> None:
        if self._rows or not self.sets:
            return
        chat = _chat_template(trainer)
        self._rows = {name: choice_rows(items, module.tokenizer, chat) for name, items in self.sets.items()}
        if self.kl_prompts:
            # The starting model's own continuations, sampled before any update: policy == reference.
            items = next(iter(self.sets.values()))[: self.kl_prompts]
            prompts = [question_row(item, module.tokenizer, chat) for item in items]
            self._kl_rollout = module.sample(prompts, score=False, max_new_tokens=self.kl_max_new_tokens, seed=0)

    def run(self, trainer: L.Trainer, module) -> None:
        step = trainer.global_step
        self._prepare(trainer, module)
        was_training = module.policy.training
        module.policy.eval()
        result: dict = {"step": step}
        try:
            if self._kl_rollout is not None:
                start = time.perf_counter()
                result["forget/kl"] = kl_to_reference(module, self._kl_rollout)
                result["time/forget_kl_s"] = time.perf_counter() - start
            for name, items in self.sets.items():
                start = time.perf_counter()
                scored = score_choices(module, items, self._rows[name], self.batch_size)
                first = self.history[0][f"forget/{name}/per_example"] if self.history else scored["per_example"]
                result |= {
                    f"forget/{name}/accuracy": scored["accuracy"],
                    f"forget/{name}/nll": scored["nll"],
                    **{f"forget/{name}/{k}": v for k, v in flips(first, scored["per_example"]).items()},
                    f"time/forget_{name}_s": time.perf_counter() - start,
                    f"forget/{name}/per_example": scored["per_example"],
                }
        finally:
            module.policy.train(was_training)
        self.history.append(result)
        self._log(trainer, result)

    def _log(self, trainer: L.Trainer, result: dict) -> None:
        logged = {k: v for k, v in result.items() if k != "step" and not k.endswith("per_example")}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=result["step"])
        rank_zero_info(f"step {result['step']}: " + ", ".join(f"{k} {v:.3f}" for k, v in logged.items() if not k.startswith("time/")))

    def fingerprint(self, trainer: L.Trainer, module) -> dict:
        chat = _chat_template(trainer)
        sets = {name: digest([[item.question, list(item.choices), item.answer] for item in items]) for name, items in self.sets.items()}
        return super().fingerprint(trainer, module) | {
            "sets": sets,
            "settings": [chat, self.kl_prompts, self.kl_max_new_tokens, self.batch_size],
        }

    def restore(self, trainer: L.Trainer, module, entries: list[dict]) -> None:
        self._prepare(trainer, module)  # now, while the policy is the starting model: the KL's continuations
        for entry in entries:
            self.history.append(entry)
            # Read, not measured: it cost this run nothing.
            self._log(trainer, {k: 0.0 if k.startswith("time/") else v for k, v in entry.items()})


def _chat_template(trainer: L.Trainer) -> bool:
    """Whether the probes' questions go through the chat template: as the run's data does."""
    return trainer.datamodule.chat_template if trainer.datamodule is not None else True


def _set_name(source: str) -> str:
    return source.removeprefix("builtin:") if source.startswith("builtin:") else Path(source).stem
