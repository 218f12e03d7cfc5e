"""Malformed input stops the run at start-up with an error that names what is wrong and where, and
damages nothing: no checkpoint, no model folder, and an earlier export left as it was."""

import json
import re
from pathlib import Path

import pytest

from lit_posttrain.cli import LitPostTrainCLI

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
TINY_GRPO = str(ROOT / "configs" / "tiny_grpo.yaml")

# Data rows: (file name, file contents, the error's expected words)
ROWS = {
    "missing_prompt": ("d.jsonl", '{"prompt": "a?", "completion": "1"}\n{"completion": "2"}\n', r"d\.jsonl: row 2.*'prompt'"),
    "no_known_columns": ("d.jsonl", '{"completion": "2"}\n', r"cannot tell the row format from the columns \['completion'\]"),
    "prompt_is_a_number": ("d.jsonl", '{"prompt": "a?", "completion": "1"}\n{"prompt": 5, "completion": "2"}\n', r"d\.jsonl: row 2: field 'prompt'"),
    "empty_prompt": ("d.jsonl", '{"prompt": "", "completion": "2"}\n', r"row 1: field 'prompt': expected a non-empty string"),
    "blank_prompt": ("d.jsonl", '{"prompt": "   ", "completion": "2"}\n', r"row 1: field 'prompt'"),
    "completion_is_a_list": ("d.jsonl", '{"prompt": "a?", "completion": ["2"]}\n', r"row 1: field 'completion\[0\]': expected a \{'role', 'content'\} dict"),
    "invalid_json": ("d.jsonl", '{"prompt": "a?", "completion": "1"}\n{"prompt": "b?", \n', r"d\.jsonl: row 2"),
    "undecodable_bytes": ("d.jsonl", b'{"prompt": "a\xff?", "completion": "1"}\n', r"row 1.*(undecodable|UTF-8)"),
    "lone_surrogate": ("d.jsonl", '{"prompt": "a\\ud800?", "completion": "1"}\n', r"row 1: field 'prompt': undecodable"),
    "messages_not_a_list": ("d.jsonl", '{"messages": "hi"}\n', r"row 1: field 'messages'"),
    "message_bad_role": ("d.jsonl", '{"messages": [{"role": "robot", "content": "hi"}]}\n', r"row 1: field 'messages\[0\]\.role'"),
    "message_content_not_text": ("d.jsonl", '{"messages": [{"role": "user", "content": 3}]}\n', r"row 1: field 'messages\[0\]\.content'"),
    "messages_end_with_system": ("d.jsonl", '{"messages": [{"role": "system", "content": "be brief"}]}\n', r"row 1.*user"),
    "gsm8k_without_hashes": ("d.jsonl", '{"question": "1+1?", "answer": "it is 2"}\n', r"row 1: field 'answer'.*####"),
    "gsm8k_non_numeric_answer": ("d.jsonl", '{"question": "1+1?", "answer": "so\\n#### two"}\n', r"row 1: field 'answer'"),
    "math_without_boxed": ("d.jsonl", '{"problem": "1+1?", "solution": "2"}\n', r"row 1: field 'solution'.*boxed"),
    "empty_file": ("d.jsonl", "", r"d\.jsonl.*(empty|no rows)"),
    "unknown_columns": ("d.jsonl", '{"foo": "a", "bar": "b"}\n', r"columns.*foo"),
    "unsupported_file_type": ("d.csv", "prompt,completion\na,b\n", r"d\.csv"),
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder holding an earlier run's exported model, which a failed run must not touch."""
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "earlier_model"
    earlier.mkdir()
    (earlier / "config.json").write_text('{"earlier": true}')
    return tmp_path


def _assert_nothing_damaged(workdir: Path) -> None:
    assert (workdir / "earlier_model" / "config.json").read_text() == '{"earlier": true}'
    assert sorted(p.name for p in (workdir / "earlier_model").iterdir()) == ["config.json"]
    assert not list(workdir.rglob("*.ckpt")) and not list(workdir.rglob("hf_model"))


def _expect_failure(args: list[str], pattern: str, capsys, workdir: Path) -> None:
    args = [*args, "--export_to", str(workdir / "earlier_model")]
    with pytest.raises((ValueError, RuntimeError, SystemExit)) as failure:
        LitPostTrainCLI(args=args)
    message = str(failure.value) if not isinstance(failure.value, SystemExit) else capsys.readouterr().err
    assert failure.type is not SystemExit or failure.value.code != 0
    assert re.search(pattern, message, re.S), message[-2000:]
    _assert_nothing_damaged(workdir)


@pytest.mark.parametrize("case", list(ROWS))
def test_malformed_rows(case, workdir, capsys):
    name, contents, pattern = ROWS[case]
    path = workdir / name
    path.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
    args = ["fit", "--config", TINY, "--data.task", "lit_posttrain.data.files.FileTask", "--data.task.train", str(path)]
    _expect_failure(args, pattern, capsys, workdir)


CONFIGS = {
    "unknown_method": (TINY, ["--model.class_path", "lit_posttrain.methods.ppo.PPO"], r"ppo"),
    "unknown_option": (TINY, ["--model.init_args.learning_rate", "0.1"], r"learning_rate"),
    "lr_not_a_number": (TINY, ["--model.init_args.optim.lr", "fast"], r"lr"),
    "unknown_dtype": (TINY, ["--model.init_args.dtype", "int8"], r"dtype"),
    "unknown_overflow_policy": (TINY, ["--data.overflow", "ignore"], r"overflow"),
    "zero_batch_size": (TINY, ["--data.batch_size", "0"], r"batch_size must be at least 1"),
    "zero_temperature": (TINY_GRPO, ["--model.init_args.engine.init_args.temperature", "0"], r"temperature must be > 0"),
    "top_p_above_one": (TINY_GRPO, ["--model.init_args.engine.init_args.top_p", "1.5"], r"top_p must be in"),
    "no_new_tokens": (TINY_GRPO, ["--model.init_args.engine.init_args.max_new_tokens", "0"], r"max_new_tokens must be at least 1"),
    "group_of_one": (TINY_GRPO, ["--model.init_args.group_size", "1"], r"group_size must be at least 2"),
    "negative_kl_weight": (TINY_GRPO, ["--model.init_args.loss.kl_coef", "-0.1"], r"kl_coef must be >= 0"),
    "refresh_every_zero_steps": (TINY_GRPO, ["--model.init_args.rollouts.every_n_steps", "0"], r"every_n_steps must be >= 1"),
    "refresh_as_a_callback": (TINY_GRPO, ["--trainer.callbacks+", "lit_posttrain.callbacks.RolloutRefresh", "--trainer.callbacks.every_n_steps", "4"], r"no longer a callback(.|\n)*--model.init_args.rollouts.every_n_steps 4"),
    "pass_at_k_above_samples": (TINY_GRPO, ["--trainer.callbacks+", "lit_posttrain.callbacks.Evaluation", "--trainer.callbacks.samples", "2", "--trainer.callbacks.k", "[4]"], r"1 <= k <= samples"),
    "evaluation_every_zero_steps": (TINY_GRPO, ["--trainer.callbacks+", "lit_posttrain.callbacks.Evaluation", "--trainer.callbacks.every_n_steps", "0"], r"every_n_steps must be >= 1"),
    "missing_probe_file": (TINY, ["--trainer.callbacks+", "lit_posttrain.callbacks.ForgettingProbes", "--trainer.callbacks.probe_sets", "[no_such_probes.jsonl]"], r"no_such_probes\.jsonl"),
    "unknown_builtin_probe_set": (TINY, ["--trainer.callbacks+", "lit_posttrain.callbacks.ForgettingProbes", "--trainer.callbacks.probe_sets", "[builtin:trivia]"], r"unknown built-in probe set"),
    "guard_of_zero_steps": (TINY, ["--trainer.callbacks+", "lit_posttrain.callbacks.NonFiniteGuard", "--trainer.callbacks.max_in_row", "0"], r"max_in_row must be at least 1"),
    "otr_zero_samples": (TINY, ["--model.class_path", "lit_posttrain.methods.otr.OTR", "--model.init_args.k", "0"], r"k >= 1"),
    "otr_zero_kappa": (TINY, ["--model.class_path", "lit_posttrain.methods.otr.OTR", "--model.init_args.kappa", "0"], r"kappa > 0"),
    "hpt_gamma_above_one": (TINY_GRPO, ["--model.class_path", "lit_posttrain.methods.hpt.HPT", "--model.init_args.gamma", "1.5"], r"gamma .* \[0, 1\]"),
    "sept_hotter_than_training": (TINY_GRPO, ["--model.class_path", "lit_posttrain.methods.sept.SePT", "--model.init_args.start_temperature", "1.2"], r"exceeds the training temperature"),
    "sept_equal_temperatures": (TINY_GRPO, ["--model.class_path", "lit_posttrain.methods.sept.SePT", "--model.init_args.start_temperature", "1.0"], r"expected gradient"),
    "sept_no_ramp": (TINY_GRPO, ["--model.class_path", "lit_posttrain.methods.sept.SePT", "--model.init_args.start_temperature", "0.6", "--model.init_args.ramp_fraction", "0"], r"ramp_fraction"),
    "opd_without_teacher": (TINY_GRPO, ["--model.class_path", "lit_posttrain.methods.opd.OPD"], r"OPD needs a teacher"),
    "jsd_beta_above_one": (TINY_GRPO, ["--model.class_path", "lit_posttrain.methods.opd.OPD", "--model.init_args.teacher", "tiny-random-llama:1", "--model.init_args.estimator", "lit_posttrain.methods.opd.FullVocabJSD", "--model.init_args.estimator.beta", "2"], r"beta must be in \[0, 1\]"),
    "discount_above_one": (TINY_GRPO, ["--model.class_path", "lit_posttrain.methods.opd.OPD", "--model.init_args.teacher", "tiny-random-llama:1", "--model.init_args.estimator", "lit_posttrain.methods.opd.SampledReverseKL", "--model.init_args.estimator.discount", "2"], r"discount must be in \[0, 1\]"),
    "unknown_operation": (TINY, ["--data.task.init_args.ops", "[^]"], r"unknown operations"),
    "more_problems_than_exist": (TINY, ["--data.task.init_args.digits", "1", "--data.task.init_args.num_train", "200"], r"distinct problems requested"),
    "template_without_operand": (TINY, ["--data.task.init_args.template", "What is {a} {op}?"], r"must contain \{b\}"),
    "zero_digits": (TINY, ["--data.task.init_args.digits", "0"], r"digits must be at least 1"),
    "invalid_regex_reward": (TINY_GRPO, ["--data.task.init_args.verifier.init_args.pattern", "("], r"not a valid regular expression"),
    "unknown_model_source": (TINY, ["--model.init_args.model", "no/such/model/anywhere"], r"accepted sources"),
    "unknown_builtin_model": (TINY, ["--model.init_args.model", "builtin:gpt-9"], r"unknown built-in model"),
    "tiny_model_bad_seed": (TINY, ["--model.init_args.model", "tiny-random-llama:x"], r"seed after ':' must be a non-negative integer"),
    "prompt_over_the_limit": (TINY, ["--data.max_prompt_tokens", "10"], r"prompt has \d+ tokens > max_prompt_tokens=10"),
    "demonstration_over_the_limit": (TINY, ["--data.max_completion_tokens", "1"], r"demonstration has \d+ tokens .* max_completion_tokens=1"),
    "every_row_skipped": (TINY, ["--data.max_prompt_tokens", "10", "--data.overflow", "skip"], r"no training rows left"),
    "bad_reward_timeout": (TINY_GRPO, ["--model.init_args.scorer", '{"class_path": "lit_posttrain.rewards.ThreadScorer", "init_args": {"timeout_s": 0}}'], r"timeout must be > 0 seconds, got timeout_s=0"),
    "scorer_without_workers": (TINY_GRPO, ["--model.init_args.scorer", '{"class_path": "lit_posttrain.rewards.ProcessScorer", "init_args": {"workers": 0}}'], r"at least one worker, got workers=0"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_configurations(case, workdir, capsys):
    config, extra, pattern = CONFIGS[case]
    _expect_failure(["fit", "--config", config, *extra], pattern, capsys, workdir)


def test_folder_without_config_is_refused(workdir, capsys):
    (workdir / "not_a_model").mkdir()
    _expect_failure(["fit", "--config", TINY, "--model.init_args.model", str(workdir / "not_a_model")], r"without config\.json", capsys, workdir)


def test_teacher_with_another_tokenizer_is_refused(workdir, capsys, tiny_model_dir):
    import shutil

    from transformers import AutoTokenizer

    teacher = workdir / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    tokenizer.add_tokens(["<new>"])
    tokenizer.save_pretrained(teacher)
    _expect_failure(["fit", "--config", TINY_GRPO, "--model.class_path", "lit_posttrain.methods.opd.OPD",
                     "--model.init_args.teacher", str(teacher)], r"does not share the policy's tokenizer", capsys, workdir)  # fmt: skip


@pytest.mark.parametrize("method", ["sft.SFT", "otr.OTR", "hpt.HPT"])
def test_a_task_without_demonstrations_is_refused_by_methods_that_need_them(method, workdir, capsys):
    path = workdir / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(4)))
    args = ["fit", "--config", TINY_GRPO, "--model.class_path", f"lit_posttrain.methods.{method}",
            "--data.task", "lit_posttrain.data.files.FileTask", "--data.task.train", str(path)]  # fmt: skip
    _expect_failure(args, r"trains on demonstrations.*the field `completion` in prompt/completion rows", capsys, workdir)


def test_the_command_shows_the_message_and_an_exit_status_not_a_traceback(workdir, capsys, monkeypatch):
    from lit_posttrain.cli import TRACEBACK_VARIABLE, main

    name, contents, pattern = ROWS["missing_prompt"]
    (workdir / name).write_text(contents)
    args = ["fit", "--config", TINY, "--data.task", "lit_posttrain.data.files.FileTask", "--data.task.train", str(workdir / name)]
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-posttrain: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err[-2000:]
    assert "Traceback" not in err and f"set {TRACEBACK_VARIABLE}=1" in err
    monkeypatch.setenv(TRACEBACK_VARIABLE, "1")  # on request, the exception itself
    with pytest.raises(ValueError, match=pattern):
        main(args)
    _assert_nothing_damaged(workdir)
