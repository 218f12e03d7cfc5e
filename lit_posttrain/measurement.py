"""Measuring a model while it trains: generation metrics on a task's held-out prompts (greedy
accuracy, pass@k, accuracy at further temperatures), and the forgetting probes (multiple-choice
items scored by likelihood, KL to the starting model). Functions of a module and its data; the
callbacks (`Evaluation`, `ForgettingProbes`) own only when to call them, logging and their state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_posttrain.data.batches import Row
from lit_posttrain.data.datamodule import tokenize_prompt
from lit_posttrain.data.multiple_choice import MultipleChoiceItem
from lit_posttrain.data.task import Example, Task
from lit_posttrain.head import divergence_in_chunks
from lit_posttrain.logprobs import completion_states, shared_prompt_logp
from lit_posttrain.losses.distillation import generalized_jsd
from lit_posttrain.metrics import pass_at_k
from lit_posttrain.padding import left_pad, right_pad
from lit_posttrain.rewards import Verifier
from lit_posttrain.rollout import Rollout

# --- generation metrics ---------------------------------------------------------------------------


@torch.no_grad()
def generation_scores(
    module, task: Task, rows: list[Row], samples: int = 0, k: list[int] = (), temperature: float = 1.0,
    temperatures: list[float] = (), verifiers: dict[str, Verifier] | None = None, max_new_tokens: int | None = None,
) -> dict[str, Tensor]:  # fmt: skip
    """Per-example scores of one generation call's `rows`, each a 1-D tensor to average: the greedy
    completions' `reward` (as the task's verifier scores it), `correct` (reward >= 1),
    `completion_length` and `truncated`; with `samples`, `pass@<k>` per prompt from `samples` completions at
    `temperature` (unbiased estimator); for each of `temperatures`, `pass@1_T<t>` per completion;
    for each of `verifiers`, `accuracy_<name>`: the greedy completions under that verifier.
    `max_new_tokens` overrides the engine's for every completion here."""
    length = {"max_new_tokens": max_new_tokens} if max_new_tokens is not None else {}
    greedy = module.sample(rows, greedy=True, task=task, **length)
    scores = {
        "reward": greedy.reward_B.float().cpu(),
        "correct": (greedy.reward_B >= 1.0).float().cpu(),
        "completion_length": greedy.completion_lengths_B.float().cpu(),
        "truncated": greedy.truncated_B.float().cpu(),
    }
    # Further verifiers score the same greedy completions (no generation of their own).
    for name, verifier in (verifiers or {}).items():
        rewards = [float(verifier(text, row.example.answer)) for text, row in zip(greedy.completions, rows, strict=True)]
        scores[f"accuracy_{name}"] = torch.tensor(rewards)
    if samples:
        sampled = module.sample(rows, n=samples, task=task, temperature=temperature, **length)
        hits_P = torch.zeros(len(rows)).index_add_(0, sampled.group_B.cpu(), (sampled.reward_B.cpu() >= 1.0).float())
        for kk in k:
            scores[f"pass@{kk}"] = torch.tensor([pass_at_k(samples, int(c), kk) for c in hits_P])
    for t in temperatures:
        swept = module.sample(rows, n=samples, task=task, temperature=t, **length)
        scores[f"pass@1_T{t:g}"] = (swept.reward_B.cpu() >= 1.0).float()
    return scores


@torch.no_grad()
def greedy_accuracy(module, rows: list[Row], task: Task | None = None, batch_size: int = 64) -> dict:
    """Greedy held-out evaluation of `rows` (default task: the training task): mean accuracy under
    the task's verifier (the mean reward, for graded verifiers), mean completion length, truncation
    rate, and the per-example rewards."""
    task = task or module.task
    calls = [generation_scores(module, task, rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    reward_B = torch.cat([c["reward"] for c in calls])
    return {
        "accuracy": reward_B.mean().item(),
        "completion_length": torch.cat([c["completion_length"] for c in calls]).mean().item(),
        "truncated": torch.cat([c["truncated"] for c in calls]).mean().item(),
        "per_example": reward_B.tolist(),
    }


# --- forgetting probes ----------------------------------------------------------------------------


def question_row(item: MultipleChoiceItem, tokenizer, chat_template: bool | str = True, template_kwargs: dict | None = None) -> Row:
    """The item's question as a user turn, tokenized as a prompt."""
    example = Example([{"role": "user", "content": item.question}], source=item.source)
    return Row(example, tokenize_prompt(tokenizer, example, chat_template, template_kwargs), None)


def choice_rows(
    items: list[MultipleChoiceItem], tokenizer, chat_template: bool | str = True, template_kwargs: dict | None = None,
    answer_form: str = "{choice}",
) -> list[Row]:  # fmt: skip
    """One row per (item, choice): the question as a user turn, the choice written in `answer_form`
    ("{choice}": the bare text; "The answer is {choice}.") as the reply to score."""
    rows = []
    for item in items:
        question = question_row(item, tokenizer, chat_template, template_kwargs)
        for choice in item.choices:
            reply = answer_form.replace("{choice}", choice)
            rows.append(Row(question.example, question.prompt_ids, tokenizer(reply, add_special_tokens=False)["input_ids"]))
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


def common_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence shares, leaving each at least one of its own (the
    last prompt token is where a reply's first token is predicted from)."""
    shortest = min(len(s) for s in sequences)
    for i in range(shortest - 1):
        if any(s[i] != sequences[0][i] for s in sequences):
            return i
    return max(shortest - 1, 0)


@torch.no_grad()
def score_choices(module, items: list[MultipleChoiceItem], rows: list[Row], batch_size: int = 64) -> dict:
    """Pick each item's likeliest choice by summed log-likelihood of its tokens. Returns accuracy,
    the mean per-token NLL of the right choices, and per item its correctness and that NLL, and
    each choice's summed log-likelihood and token count (to rank by another rule).

    `rows` are `choice_rows(items)`: one per choice, the item's question as the prompt. The question
    runs once per item and its key/value cache is shared by the item's choices, which are a few
    tokens against a question of dozens: about a quarter of the work of scoring each row in full.
    What every question of a batch starts with (a chat template's system turn: 22 of SmolLM2's 37
    prompt tokens) runs once for the batch, which halves the rest."""
    sums, counts = [], []
    starts = [0]
    for item in items:
        starts.append(starts[-1] + len(item.choices))
    for first, end in item_batches(items, batch_size):
        batch = rows[starts[first] : starts[end]]
        questions = [rows[starts[i]].prompt_ids for i in range(first, end)]
        shared = common_prefix_length(questions)
        prefix_S = torch.tensor(questions[0][:shared], device=module.device) if shared else None
        prompt_PT, prompt_attention_PT = left_pad([q[shared:] for q in questions], module.tokenizer.pad_token_id)
        group_R = torch.repeat_interleave(torch.tensor([len(items[i].choices) for i in range(first, end)]))
        choice_RC, choice_attention_RC = right_pad([row.completion_ids for row in batch], module.tokenizer.pad_token_id)
        tokens_RT = torch.cat([prompt_PT[group_R], choice_RC], 1).to(module.device)
        attention_RT = torch.cat([prompt_attention_PT[group_R], choice_attention_RC], 1).to(module.device)
        logp_RT = shared_prompt_logp(
            module.policy, tokens_RT, attention_RT, group_R.to(module.device), prompt_PT.shape[1], prefix_S=prefix_S
        )
        sums += logp_RT.sum(-1).tolist()
        counts += choice_attention_RC.sum(-1).tolist()
    correct, nll, choice_logp, choice_tokens = [], [], [], []
    offset = 0
    for item in items:
        scores = sums[offset : offset + len(item.choices)]
        correct.append(max(range(len(scores)), key=scores.__getitem__) == item.answer)
        nll.append(-scores[item.answer] / max(counts[offset + item.answer], 1))
        choice_logp.append(scores)
        choice_tokens.append(counts[offset : offset + len(item.choices)])
        offset += len(item.choices)
    return {
        "accuracy": sum(correct) / len(correct), "nll": sum(nll) / len(nll), "per_example": correct, "per_example_nll": nll,
        "choice_logp": choice_logp, "choice_tokens": choice_tokens,
    }  # fmt: skip


def score_in_forms(module, items: list[MultipleChoiceItem], rows_by_form: dict[str, list[Row]], batch_size: int = 64) -> dict:
    """Each item scored with its choices written in several answer forms (`rows_by_form`: form ->
    `choice_rows(items, answer_form=...)`): every form's `score_choices` under `forms`, and the
    choice likeliest in any of the forms, ranked by log-sum-exp of its forms' summed
    log-likelihoods (the probability that the reply is that choice, written in one of them).
    A model that moves its answers from one form to another (bare text to "Die Antwort ist ...")
    keeps that sum where a probe of one form reads the move as lost knowledge (the forgetting
    study's style control found exactly that: benchmarks/FORGETTING.md). The sum ranks in the
    form the model favours, though, and forms rank differently even for the starting model: a
    move to a better-ranking form raises it, so each form is returned to compare with its own start."""
    forms = {form: score_choices(module, items, rows, batch_size) for form, rows in rows_by_form.items()}
    correct = [likeliest_in_any_form([scored["choice_logp"][i] for scored in forms.values()]) == item.answer for i, item in enumerate(items)]
    return {"accuracy": sum(correct) / len(correct), "per_example": correct, "forms": forms}


def likeliest_in_any_form(logp_by_form: list[list[float]]) -> int:
    """The choice with the highest probability summed over the forms, `logp_by_form[f][c]` the
    summed log-likelihood of choice c written in form f. A sum, not the best form's: two forms
    that each give a choice a fair chance outweigh one form that is sure of another."""
    logp_FC = torch.tensor(logp_by_form, dtype=torch.float64)
    return int(logp_FC.logsumexp(0).argmax())


@torch.no_grad()
def kl_to_reference(module, rollout: Rollout) -> dict[str, float]:
    """Mean per-token KL between the policy and the reference (the starting model), in both
    directions, over the full vocabulary at every completion position of `rollout` (continuations
    the starting model wrote): exact at each position, no sampling noise. `reverse` is
    KL(policy || reference); `forward` is KL(reference || policy), the direction "RL's Razor"
    (arXiv 2509.04259) found to predict forgetting when measured on the training task's prompts."""
    policy_NX, policy_head = completion_states(module.policy, rollout)
    with module.reference() as reference:
        reference_NX, reference_head = completion_states(reference, rollout)
    # generalized_jsd's end points: beta 1 is KL(student || teacher), beta 0 KL(teacher || student).
    return {
        direction: divergence_in_chunks(
            policy_NX, policy_head, reference_NX, reference_head, lambda p, r, beta=beta: generalized_jsd(p, r, beta)
        ).mean().item()
        for direction, beta in (("reverse", 1.0), ("forward", 0.0))
    }
