"""Evaluation, forgetting probes and plots: hand values, crafted cases, and the tiny model."""

import csv
import gc
import itertools
import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from lit_posttrain.callbacks.cadence import crossed_multiple
from lit_posttrain.callbacks.evaluation import Evaluation
from lit_posttrain.callbacks.memory import live_objects
from lit_posttrain.cli import LitPostTrainCLI
from lit_posttrain.data.datamodule import pack_demonstrations
from lit_posttrain.data.multiple_choice import MultipleChoiceItem, load_multiple_choice
from lit_posttrain.data.task import DataError
from lit_posttrain.logprobs import first_masked
from lit_posttrain.measurement import (
    choice_rows,
    common_prefix_length,
    item_batches,
    likeliest_in_any_form,
    score_choices,
    score_in_forms,
)
from lit_posttrain.methods.sft import SFT
from lit_posttrain.metrics import flips, pass_at_k
from lit_posttrain.plots import main as plot_main

ROOT = Path(__file__).resolve().parents[1]
TINY_GRPO = str(ROOT / "configs" / "tiny_grpo.yaml")
FRAGMENTS = sorted((ROOT / "callbacks").glob("*.yaml"))
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 0, 1, 0.0),
        (5, 2, 1, 0.4),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3, 2) / C(5, 2)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7, 5) / C(10, 5)
        (4, 1, 4, 1.0),  # n = k: any correct sample passes
        (4, 0, 4, 0.0),
        (8, 8, 3, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_impossible_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_flips_on_a_crafted_sequence():
    first = [True, True, False, False, True]
    now = [False, True, True, False, False]
    assert flips(first, now) == {"right_to_wrong": 2, "wrong_to_right": 1}
    assert flips(first, first) == {"right_to_wrong": 0, "wrong_to_right": 0}
    with pytest.raises(ValueError, match="same examples"):
        flips(first, now[:3])


def test_builtin_probe_set_loads_and_bad_rows_are_named(tmp_path):
    items = load_multiple_choice("builtin:general_knowledge")
    assert len(items) >= 200 and all(len(i.choices) == 4 for i in items)
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"question": "Q?", "choices": ["a", "b"], "answer": 0}\n{"question": "Q2?", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(DataError, match=r"mc\.jsonl: row 2: field 'answer'"):
        load_multiple_choice(str(bad))
    with pytest.raises(DataError, match="unknown built-in probe set"):
        load_multiple_choice("builtin:trivia")


def test_multiple_choice_scorer_picks_the_option_made_much_likelier():
    module = SFT(model="tiny-random-llama", dtype="float32")
    module.configure_model()
    vocab, hidden = module.policy.config.vocab_size, module.policy.config.hidden_size
    # An output head that ignores the context and strongly prefers 'z': p('z') ~ 1 everywhere.
    head = torch.nn.Linear(hidden, vocab, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[module.tokenizer.convert_tokens_to_ids("z")] = 10.0
    module.policy.lm_head = head
    items = [
        MultipleChoiceItem("Which?", ("abc", "zzz", "xyz"), answer=1),
        MultipleChoiceItem("Which one?", ("zz", "ab", "cd"), answer=0),
        MultipleChoiceItem("And?", ("zzzz", "b", "c"), answer=2),  # the scorer must say this one is wrong
    ]
    result = score_choices(module, items, choice_rows(items, module.tokenizer))
    assert result["per_example"] == [True, True, False]
    assert result["accuracy"] == pytest.approx(2 / 3)
    # NLL of the right choices: ~0 for the two 'z' answers, ~10 nats for 'c' in the third.
    assert result["nll"] == pytest.approx((0 + 0 + 10) / 3, abs=0.05)
    assert result["per_example_nll"] == pytest.approx([0, 0, 10], abs=0.05)


def test_item_batches_keep_items_whole():
    items = [MultipleChoiceItem("q", tuple("abcdefghij"[:n]), 0) for n in (3, 4, 2, 10, 1)]
    assert item_batches(items, 7) == [(0, 2), (2, 3), (3, 4), (4, 5)]  # an item larger than a batch goes alone
    assert item_batches(items, 100) == [(0, 5)] and item_batches([], 7) == []


def test_common_prefix_length_leaves_each_sequence_a_token():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical: the last token stays each one's own
    assert common_prefix_length([[7], [7, 8]]) == 0 and common_prefix_length([[1, 2], [3, 2]]) == 0


@pytest.mark.parametrize("checkpointing", [False, True])
def test_choices_scored_against_a_shared_question_match_scoring_each_in_full(checkpointing):
    module = SFT(model="tiny-random-llama", dtype="float32", gradient_checkpointing=checkpointing)
    module.configure_model()
    module.policy.eval()
    items = load_multiple_choice("builtin:general_knowledge", limit=12)
    rows = choice_rows(items, module.tokenizer)
    # The questions' common start (the chat template's) runs once per batch: that path is tested.
    assert common_prefix_length([row.prompt_ids for row in rows]) >= 1
    shared = score_choices(module, items, rows, batch_size=7)  # uneven batches of whole items
    # Every (question, choice) row run in full, as a plain per-token scorer would.
    tokens_BT, attention_BT, mask_BT = pack_demonstrations(rows, module.tokenizer.pad_token_id)
    with torch.no_grad():
        sums_B = (module.policy_logp(tokens_BT, attention_BT, first_scored=first_masked(mask_BT)) * mask_BT).sum(-1)
    correct, nll, offset = [], [], 0
    for item in items:
        scores = sums_B[offset : offset + len(item.choices)]
        correct.append(int(scores.argmax()) == item.answer)
        nll.append(-scores[item.answer].item() / int(mask_BT[offset + item.answer].sum()))
        offset += len(item.choices)
    assert shared["per_example"] == correct
    assert shared["nll"] == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert shared["per_example_nll"] == pytest.approx(nll, rel=1e-5)


def test_the_choice_likeliest_in_any_form_sums_the_forms_probabilities():
    # Form A picks choice 0, form B choice 1: log(e^-1 + e^-5) = -0.982 beats log(e^-2 + e^-1.5) = -1.026.
    assert likeliest_in_any_form([[-1.0, -2.0], [-5.0, -1.5]]) == 0
    # The best single form's best (A's -1.0 for choice 0) loses to a sum: log(e^-1 + e^-9) = -1.000
    # against log(e^-1.2 + e^-1.3) = -0.556. A max over forms would pick choice 0.
    assert likeliest_in_any_form([[-1.0, -1.2], [-9.0, -1.3]]) == 1
    assert likeliest_in_any_form([[-3.0, -1.0, -2.0]]) == 1  # one form: its own ranking


def test_choices_scored_in_several_forms_match_each_reply_scored_in_full():
    module = SFT(model="tiny-random-llama", dtype="float32")
    module.configure_model()
    module.policy.eval()
    items = load_multiple_choice("builtin:general_knowledge", limit=6)
    forms = {"bare": "{choice}", "sentence": "The answer is {choice}.", "german": "Die Antwort ist {choice}."}
    rows = {form: choice_rows(items, module.tokenizer, answer_form=template) for form, template in forms.items()}
    reply = f"The answer is {items[0].choices[1]}."
    assert rows["sentence"][1].completion_ids == module.tokenizer(reply, add_special_tokens=False)["input_ids"]
    assert [r.prompt_ids for r in rows["german"]] == [r.prompt_ids for r in rows["bare"]]  # the same questions
    scored = score_in_forms(module, items, rows, batch_size=7)
    # Every (question, reply) of every form run in full, then each choice's probability summed
    # over the forms by hand.
    sums_FB = []
    for form in forms:
        tokens_BT, attention_BT, mask_BT = pack_demonstrations(rows[form], module.tokenizer.pad_token_id)
        with torch.no_grad():
            sums_FB.append((module.policy_logp(tokens_BT, attention_BT, first_scored=first_masked(mask_BT)) * mask_BT).sum(-1).tolist())
    expected, offset = [], 0
    for item in items:
        any_form = [math.log(sum(math.exp(sums_B[offset + c]) for sums_B in sums_FB)) for c in range(len(item.choices))]
        expected.append(max(range(len(any_form)), key=any_form.__getitem__) == item.answer)
        offset += len(item.choices)
    assert scored["per_example"] == expected and scored["accuracy"] == pytest.approx(sum(expected) / len(items))
    for form, sums_B in zip(forms, sums_FB, strict=True):
        assert scored["forms"][form]["per_example"] == score_choices(module, items, rows[form])["per_example"]
        assert [x for logp in scored["forms"][form]["choice_logp"] for x in logp] == pytest.approx(sums_B, rel=1e-5)


def test_probes_in_answer_forms_log_each_form_and_their_sum(in_tmp):
    """Each form's results are the plain scorer's on replies in that form; the headline accuracy,
    and the flips, are the forms' sum."""
    from lit_posttrain.callbacks.forgetting import _prompt_format

    forms = {"bare": "{choice}", "sentence": "The answer is {choice}."}
    cli = LitPostTrainCLI(
        args=[
            "fit", "--config", TINY_GRPO, "--trainer.max_steps", "1",
            "--trainer.callbacks+", "lit_posttrain.callbacks.ForgettingProbes", "--trainer.callbacks.max_items", "12",
            "--trainer.callbacks.kl_prompts", "0", "--trainer.callbacks.answer_forms", json.dumps(forms),
        ]
    )  # fmt: skip
    (probes,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ForgettingProbes"]
    assert probes.answer_forms == forms and [h["step"] for h in probes.history] == [0, 1]
    gk, last = "forget/general_knowledge", probes.history[-1]
    items = probes.sets["general_knowledge"]
    chat, kwargs = _prompt_format(cli.trainer)
    cli.model.policy.eval()
    in_form = {form: score_choices(cli.model, items, choice_rows(items, cli.model.tokenizer, chat, kwargs, t)) for form, t in forms.items()}
    for form in forms:  # the trained model, scored again outside the callback
        assert last[f"{gk}/{form}/per_example"] == in_form[form]["per_example"]
        assert last[f"{gk}/{form}/nll"] == pytest.approx(in_form[form]["nll"], rel=1e-5)
    summed = [likeliest_in_any_form([in_form[f]["choice_logp"][i] for f in forms]) == item.answer for i, item in enumerate(items)]
    assert last[f"{gk}/per_example"] == summed and last[f"{gk}/accuracy"] == pytest.approx(statistics.fmean(summed))
    assert f"{gk}/nll" not in last  # a per-token NLL of a sum over forms of different lengths means nothing
    changed = sum(a != b for a, b in zip(probes.history[0][f"{gk}/per_example"], summed, strict=True))
    assert last[f"{gk}/right_to_wrong"] + last[f"{gk}/wrong_to_right"] == changed  # flips of the forms' sum
    logged = {k for row in _logged(cli) for k, v in row.items() if v}
    assert {f"{gk}/sentence/accuracy", f"{gk}/bare/nll", f"{gk}/accuracy"} <= logged


@pytest.mark.parametrize(
    ("forms", "message"),
    [
        ({}, "answer_forms is empty"),
        ({"sentence": "The answer is {answer}."}, r"answer_forms\.sentence: .* has no \{choice\}"),
        ({"a/b": "{choice}"}, "'a/b' cannot name a form"),
        ({"nll": "{choice}"}, "'nll' cannot name a form"),
    ],
)
def test_bad_answer_forms_are_refused_with_the_form_named(forms, message):
    from lit_posttrain.callbacks import ForgettingProbes

    with pytest.raises(ValueError, match=message):
        ForgettingProbes(answer_forms=forms)


def _logged(cli):
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_probes_kl_is_zero_at_step_zero_and_positive_after_training(in_tmp):
    cli = LitPostTrainCLI(
        args=[
            "fit", "--config", TINY_GRPO, "--trainer.max_steps", "2", "--model.init_args.lora", "{}",
            "--trainer.callbacks+", str(ROOT / "callbacks" / "forgetting.yaml"),
            "--trainer.callbacks.every_n_steps", "1", "--trainer.callbacks.max_items", "40",
            "--trainer.callbacks.kl_prompts", "8", "--trainer.callbacks.task_kl_prompts", "4",
            "--trainer.callbacks.history_file", str(in_tmp / "history.json"),
            "--trainer.callbacks+", str(ROOT / "callbacks" / "plots.yaml"),
            "--trainer.callbacks+", "lit_posttrain.callbacks.MemoryMonitor",
            "--trainer.callbacks.count_tensors", "true", "--trainer.callbacks.release_freed", "true",
        ]
    )  # fmt: skip
    (probes,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ForgettingProbes"]
    assert [h["step"] for h in probes.history] == [0, 1, 2]
    # Both directions, along the GK questions and along the task's own held-out prompts.
    for name in ("forget/kl", "forget/forward_kl", "forget/task_kl", "forget/task_forward_kl"):
        kl = [h[name] for h in probes.history]
        assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 1e-4, name
    last = probes.history[-1]
    assert last["forget/forward_kl"] != pytest.approx(last["forget/kl"], rel=1e-3)  # two directions, not one twice
    assert len(probes._kl_rollouts["task_kl"].group_B) == 4
    # The history file: every probe so far, per-item results included, as the paired tests read it.
    assert json.loads((in_tmp / "history.json").read_text()) == json.loads(json.dumps(probes.history))
    (memory,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "MemoryMonitor"]
    assert [step for step, _ in memory.history] == [1, 2] and all(0.1 < gib < 64 for _, gib in memory.history)
    assert sum(1 for r in _logged(cli) if r.get("memory/rss_gib")) == 2
    # The census holds at least the policy's parameters and Adam's two moments of the trained ones.
    parameter_bytes = sum(p.numel() * p.element_size() for p in cli.model.policy.parameters())
    trained_bytes = sum(p.numel() * p.element_size() for p in cli.model.policy.parameters() if p.requires_grad)
    (census,) = [r for r in _logged(cli) if r.get("memory/tensor_gib") and int(r["step"]) == 2]
    assert float(census["memory/tensor_gib"]) * 2**30 >= parameter_bytes + 2 * trained_bytes
    assert float(census["memory/python_objects"]) > float(census["memory/tensors"]) > 0
    first = probes.history[0]
    assert first["forget/general_knowledge/right_to_wrong"] == 0 and len(first["forget/general_knowledge/per_example"]) == 40
    last = probes.history[-1]
    before, after = first["forget/general_knowledge/per_example"], last["forget/general_knowledge/per_example"]
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    assert last["forget/general_knowledge/right_to_wrong"] + last["forget/general_knowledge/wrong_to_right"] == changed
    assert statistics.fmean(last["forget/general_knowledge/per_example_nll"]) == pytest.approx(last["forget/general_knowledge/nll"])
    assert any(r.get("time/forget_kl_s") for r in _logged(cli))
    pngs = sorted(p.name for p in Path(cli.trainer.log_dir).glob("*.png"))
    assert pngs == ["forgetting.png", "training.png"]  # no Evaluation callback in this run: no evaluation chart
    for png in Path(cli.trainer.log_dir).glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_live_objects_counts_each_storage_once():
    gc.collect()  # no garbage collected between the two counts but what this test made
    before_objects, before_tensors, before_bytes = live_objects()
    base = torch.zeros(1000)  # 4000 bytes
    views = [base[:10], base.view(10, 100), base[500:]]  # the same storage, not three more
    gc.collect()
    objects, tensors, nbytes = live_objects()
    assert (tensors - before_tensors, nbytes - before_bytes) == (1, 4000)
    assert objects > before_objects
    del views


def test_evaluation_pass_at_k_and_flips_through_the_callback(in_tmp):
    cli = LitPostTrainCLI(
        args=[
            "fit", "--config", TINY_GRPO, "--trainer.max_steps", "2",
            "--trainer.callbacks+", str(ROOT / "callbacks" / "evaluation.yaml"),
            "--trainer.callbacks.every_n_steps", "1", "--trainer.callbacks.max_examples", "8",
            "--trainer.callbacks.temperatures", "[0.5, 1.0]",
            "--trainer.callbacks.verifiers", '{"any_digit": {"class_path": "lit_posttrain.rewards.RegexMatch", "init_args": {"pattern": "\\\\d", "whole": false}}, "never": {"class_path": "lit_posttrain.rewards.ExactMatch", "init_args": {"strip": false}}}',
        ]
    )  # fmt: skip
    (evaluation,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "Evaluation"]
    assert [h["step"] for h in evaluation.history] == [0, 1, 2]
    for h in evaluation.history:
        assert 0 <= h["pass@1"] <= h["pass@4"] <= 1
        assert len(h["per_example"]) == 8
        # At the pass@k samples' own temperature (1.0) and seeds, the sweep draws the same samples.
        assert h["pass@1_T1"] == pytest.approx(h["pass@1"]) and 0 <= h["pass@1_T0.5"] <= 1
        # A further verifier scores the same greedy completions: this one is the task's own (a digit anywhere).
        assert h["accuracy_any_digit"] == pytest.approx(h["accuracy"]) and 0 <= h["accuracy_never"] <= h["accuracy"]
    assert any(h["accuracy"] > 0 for h in evaluation.history)  # the verifiers' equality above is not 0 == 0
    with pytest.raises(ValueError, match="temperatures need samples >= 1"):
        Evaluation(temperatures=[0.5])
    rows = [r for r in _logged(cli) if r.get("eval/pass@4")]
    assert len(rows) == 3 and all(r.get("eval/right_to_wrong") for r in rows)


def test_evaluation_can_let_replies_run_longer_than_training(in_tmp):
    # configs/tiny_grpo.yaml trains on 4-token rollouts; its random model almost never ends a reply.
    cli = LitPostTrainCLI(
        args=[
            "fit", "--config", TINY_GRPO, "--trainer.max_steps", "1",
            "--trainer.callbacks+", "lit_posttrain.callbacks.Evaluation", "--trainer.callbacks.max_examples", "8",
            "--trainer.callbacks.max_new_tokens", "10",
        ]
    )  # fmt: skip
    (evaluation,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "Evaluation"]
    assert all(4 < h["completion_length"] <= 10 for h in evaluation.history)
    trained = [float(r["train/completion_length"]) for r in _logged(cli) if r.get("train/completion_length")]
    assert trained and max(trained) <= 4
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        Evaluation(max_new_tokens=0)


def test_a_baseline_cache_is_measured_once_and_read_by_another_method_from_the_same_start(in_tmp):
    def measured(*args, cache: bool) -> tuple[list[dict], list[dict]]:
        cached = lambda name: ["--trainer.callbacks.baseline_cache", str(in_tmp / f"{name}.json")] if cache else []  # noqa: E731
        cli = LitPostTrainCLI(
            args=[
                "fit", "--config", TINY_GRPO, "--trainer.max_steps", "1", "--seed_everything", "0", *args,
                "--trainer.callbacks+", str(ROOT / "callbacks" / "evaluation.yaml"), "--trainer.callbacks.every_n_steps", "null",
                "--trainer.callbacks.max_examples", "8", *cached("evaluation"),
                "--trainer.callbacks+", str(ROOT / "callbacks" / "forgetting.yaml"), "--trainer.callbacks.every_n_steps", "null",
                "--trainer.callbacks.max_items", "16", "--trainer.callbacks.kl_prompts", "2", *cached("forgetting"),
            ]
        )  # fmt: skip
        evaluation, forgetting = (next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == n) for n in ("Evaluation", "ForgettingProbes"))
        return evaluation.history, forgetting.history

    def untimed(entries: list[dict]) -> list[dict]:
        return [{k: v for k, v in e.items() if "time" not in k} for e in entries]

    written = measured(cache=True)  # GRPO measures and writes both files
    sft = ["--model.class_path", "lit_posttrain.methods.sft.SFT"]
    own = measured(*sft, cache=False)  # what SFT measures itself from the same start
    read = measured(*sft, cache=True)
    for w, o, r in zip(written, own, read, strict=True):
        assert untimed(w[:1]) == untimed(o[:1]) == untimed(r[:1]), "the same starting model measures the same"
        assert len(r) == 2 and r[1]["step"] == 1  # and the run still measures after training itself
    assert read[1][1]["forget/kl"] > 0  # along the continuations this run's own starting model wrote
    with pytest.raises(ValueError, match=r"evaluation\.json was measured for another start \(examples differ\)"):
        measured("--data.task.init_args.seed", "5", cache=True)  # other held-out sums


def test_plot_command_compares_runs(in_tmp, capsys):
    runs = []
    for seed in (1, 2):
        cli = LitPostTrainCLI(args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "3", "--seed_everything", str(seed)])
        runs.append(cli.trainer.log_dir)
    plot_main([*runs, "--out", str(in_tmp / "compare"), "--labels", "seed 1", "seed 2"])
    assert (in_tmp / "compare" / "training.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        plot_main(runs)  # several runs need --out


@pytest.mark.parametrize(("config", "fragment"), list(itertools.product(CONFIGS, FRAGMENTS)), ids=lambda p: p.stem)
def test_every_fragment_appends_to_every_config(config, fragment, capsys):
    with pytest.raises(SystemExit):
        LitPostTrainCLI(args=["fit", "--config", str(config), "--trainer.callbacks+", str(fragment), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    paths = [cb["class_path"] for cb in printed["trainer"]["callbacks"] or []]
    own = [cb["class_path"] for cb in (yaml.safe_load(config.read_text()).get("trainer", {}).get("callbacks") or [])]
    assert paths[: len(own)] == own, "the config's own callbacks are kept"
    assert paths[-1] == yaml.safe_load(fragment.read_text())["class_path"], "the fragment's callback is appended"


def test_training_chart_shows_the_reward_not_a_surrogate_loss():
    from lit_posttrain.plots import GROUPS, _metrics_of_group

    training = GROUPS[0][2]
    sampled = {"train/loss": [(1, 1e-8)], "train/reward": [(1, 0.5)], "train/kl": [(1, 0.1)]}
    assert _metrics_of_group(sampled, training) == ["train/kl", "train/reward"]
    sft = {"train/loss": [(1, 2.0)], "train/nll": [(1, 2.0)]}
    assert _metrics_of_group(sft, training) == ["train/loss", "train/nll"]  # no reward: its loss is the progress


def test_the_kl_questions_are_spread_over_the_sets_topics():
    """The built-in set is ordered by topic: its first 16 questions are all geography."""
    from lit_posttrain.callbacks import ForgettingProbes
    from lit_posttrain.data.multiple_choice import BUILTIN_PROBES

    topics = [json.loads(line)["topic"] for line in BUILTIN_PROBES["general_knowledge"].read_text().splitlines()]
    assert len(set(topics[:16])) == 1
    probes = ForgettingProbes(kl_prompts=16)
    chosen = probes._kl_items()
    items = probes.sets["general_knowledge"]
    assert len(chosen) == 16 and chosen == items[:: len(items) // 16][:16]
    assert len({topics[items.index(item)] for item in chosen}) >= 6


def test_a_cadence_is_due_when_a_batch_crosses_a_multiple_of_it():
    """Measuring, exporting and logging completions share one rule; a batch of several optimizer
    steps (ppo_epochs x mini_batches) can cross a multiple without ending on it."""
    at, before = (lambda step: SimpleNamespace(global_step=step)), (lambda step: SimpleNamespace(_steps_before_batch=step))
    assert crossed_multiple(at(4), before(2), 3)  # steps 3 and 4 in one batch: 3 was crossed
    assert not crossed_multiple(at(5), before(4), 3) and crossed_multiple(at(6), before(4), 3)
    one_a_batch = SimpleNamespace()  # SFT: one optimizer step a batch
    assert [s for s in range(0, 10) if crossed_multiple(at(s), one_a_batch, 3)] == [3, 6, 9]
