"""Everything through the real `lit-posttrain` CLI, on the tiny model (seconds per run)."""

import csv
import logging
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_posttrain.cli import LitPostTrainCLI, dropped_method_arguments
from lit_posttrain.data import DataError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
TINY_GRPO = str(ROOT / "configs" / "tiny_grpo.yaml")


def run_cli(*args: str) -> LitPostTrainCLI:
    return LitPostTrainCLI(args=list(args))


def metric_column(metrics_csv: Path, name: str) -> list[float]:
    with open(metrics_csv) as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_export_false_saves_no_model(in_tmp, capsys):
    cli = run_cli("fit", "--config", TINY, "--trainer.max_steps", "1", "--export", "false")
    assert "Trained model not saved (--export false)" in capsys.readouterr().out
    assert not list(Path(cli.trainer.log_dir).rglob("hf_model*")) and not list(in_tmp.rglob("*.safetensors"))


def test_a_config_without_a_seed_runs_with_seed_0_without_a_warning(in_tmp, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # left by an earlier run in this process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = run_cli("fit", "--config", TINY, "--trainer.max_steps", "1", "--export", "false")
    assert cli.config["fit"]["seed_everything"] == 0
    assert not [w for w in caught if "No seed found" in str(w.message)]


def test_fit_memorises_and_saves_a_loadable_model(in_tmp, tiny_model_dir, capsys):
    cli = run_cli("fit", "--config", TINY)
    log_dir = Path(cli.trainer.log_dir)
    nll = metric_column(log_dir / "metrics.csv", "train/nll")
    assert len(nll) == 20
    assert nll[-1] < 0.5 * nll[0], nll

    saved = log_dir / "hf_model"
    assert f"Trained model saved to {saved.resolve()}" in capsys.readouterr().out
    before = load_file(Path(tiny_model_dir) / "model.safetensors")
    after = load_file(saved / "model.safetensors")
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before), "every weight trains in full fine-tuning"

    model = AutoModelForCausalLM.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(saved)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 1 + 2?"}], add_generation_prompt=True)
    ids = torch.tensor([prompt["input_ids"]])
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4) or out[0, -1] == tokenizer.eos_token_id


@pytest.mark.parametrize("merge", [True, False])
def test_lora_fit_saves_merged_or_adapter_folder(in_tmp, merge):
    cli = run_cli(
        "fit", "--config", TINY, "--trainer.max_steps", "3",
        "--model.init_args.lora", "{}", f"--model.init_args.lora.merge_on_save={str(merge).lower()}",
    )  # fmt: skip
    saved = Path(cli.trainer.log_dir) / "hf_model"
    assert (saved / "adapter_config.json").exists() != merge
    assert (saved / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(saved)  # an adapter folder loads through peft
    tokens = torch.tensor([[5, 20, 21]])
    assert torch.allclose(model(tokens).logits.float(), cli.model.policy(tokens).logits.float(), atol=1e-4)


def test_sft_in_micro_batches_gives_the_gradient_of_one_pass(in_tmp):
    grads = {}

    class Grab(L.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            grads.update({n: p.grad.clone() for n, p in module.policy.named_parameters()})

    def run(*micro_batching: str) -> dict[str, torch.Tensor]:
        cli = LitPostTrainCLI(
            args=[
                "--config", TINY, "--trainer.max_steps", "1", "--data.shuffle", "false", "--data.batch_size", "4",
                "--data.task.init_args.digits", "2", "--data.task.init_args.shots", "0",
                "--trainer.limit_val_batches", "0", "--model.init_args.optim.lr", "0.0", *micro_batching,
            ],
            run=False,
        )  # fmt: skip

        cli.trainer.callbacks.append(Grab())
        cli.trainer.fit(cli.model, cli.datamodule)
        lengths = [len(r.completion_ids) for r in cli.datamodule.train_rows[:4]]
        assert len(set(lengths)) > 1, "rows of different lengths are what makes a mean of means wrong"
        # The logged gradient norm is the norm of the gradient the step used (the reference in
        # float64: torch's float32 norm of one long vector is off by ~1e-5 on some CPUs).
        (logged,) = metric_column(Path(cli.trainer.log_dir) / "metrics.csv", "train/grad_norm")
        assert logged == pytest.approx(torch.cat([g.flatten() for g in grads.values()]).double().norm().item(), rel=1e-5)
        return dict(grads)

    one_pass = run()
    one_row_a_pass = run("--model.init_args.micro_batching.max_rows", "1")
    for name, grad in one_pass.items():
        assert torch.allclose(grad, one_row_a_pass[name], atol=1e-6), name


def test_gradient_accumulation_is_refused_saying_what_to_set(in_tmp):
    with pytest.raises(ValueError, match=r"accumulate_grad_batches: 4: SFT .* set data.batch_size: 8 and remove accumulate_grad_batches"):
        run_cli("fit", "--config", TINY, "--data.batch_size", "2", "--trainer.accumulate_grad_batches", "4")


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_report_the_held_out_token_mean_nll(in_tmp, subcommand):
    """The metric over micro-batches of held-out rows is the token-weighted mean over all of them
    (not a mean of batch means), recomputed here in one pass over every held-out row."""
    cli = run_cli(subcommand, "--config", TINY, "--data.batch_size", "3")
    key = "val/nll" if subcommand == "validate" else "test/nll"
    rows = cli.datamodule.eval_rows
    assert len(rows) % 3 and len({len(r.completion_ids) for r in rows}) > 1, "uneven batches and lengths"
    with torch.no_grad():
        logp_BT, mask_BT = cli.model.demonstration_logp(rows)
    expected = -(logp_BT * mask_BT).sum() / mask_BT.sum()
    assert cli.trainer.callback_metrics[key].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", "--config", str(ROOT / "configs" / config), "--print_config")
    assert exit_.value.code == 0
    assert "class_path: lit_posttrain.methods" in capsys.readouterr().out


@pytest.mark.parametrize(
    "help_args",
    [
        ["--help"],
        ["--model.help", "lit_posttrain.methods.sft.SFT"],
        ["--model.help", "lit_posttrain.methods.sft.SFT", "--model.init_args.lora", "{}", "--model.lora.help"],
        ["--model.help", "lit_posttrain.methods.sft.SFT", "--model.optim.help"],
        ["--data.task.help", "lit_posttrain.data.arithmetic.Arithmetic"],
    ],
)
def test_every_argument_has_help(help_args, capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", *help_args)
    lines = capsys.readouterr().out.splitlines()
    options = [i for i, line in enumerate(lines) if line.strip().startswith(("--model.", "--data."))]
    assert len(options) >= 3
    undocumented = []
    for i in options:
        head = lines[i].strip()
        # jsonargparse prints the help on the option's line or the next; absent help shows only the type
        text = head.split("  ", 1)[1].strip() if "  " in head else lines[i + 1].strip()
        if not text or text.startswith(("(type:", "--")):
            undocumented.append(head)
    assert not undocumented, undocumented


def test_file_task_through_the_cli(in_tmp):
    cli = run_cli(
        "fit", "--config", TINY, "--trainer.max_steps", "2",
        "--data.task", "lit_posttrain.data.files.FileTask",
        "--data.task.train", str(ROOT / "tests" / "data" / "gsm8k.jsonl"),
        "--data.task.eval_fraction", "0.34",
        "--data.task.verifier", "lit_posttrain.rewards.NumericMatch", "--data.task.verifier.extract", "last",
        "--data.max_prompt_tokens", "1000", "--data.max_completion_tokens", "1000",
    )  # fmt: skip
    task = cli.datamodule.task
    assert len(task.train_examples()) == 2 and len(task.eval_examples()) == 1
    assert task.reward([], "so the answer is 1,234.", "1234") == 1.0


def test_bad_row_stops_the_run_at_start_up_and_writes_nothing(in_tmp):
    bad = in_tmp / "bad.jsonl"
    bad.write_text('{"prompt": "What is 1 + 1?", "completion": "2"}\n{"prompt": 5, "completion": "3"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: field 'prompt'"):
        run_cli("fit", "--config", TINY, "--data.task", "lit_posttrain.data.files.FileTask", "--data.task.train", str(bad))
    assert not list(in_tmp.rglob("hf_model")) and not list(in_tmp.rglob("*.ckpt"))


def test_long_prompts_are_refused_or_counted(in_tmp):
    with pytest.raises(DataError, match="max_prompt_tokens=20"):
        run_cli("fit", "--config", TINY, "--data.max_prompt_tokens", "20")
    cli = run_cli("fit", "--config", TINY, "--data.max_prompt_tokens", "20", "--data.overflow", "truncate", "--trainer.max_steps", "1")
    metrics = (Path(cli.trainer.log_dir) / "metrics.csv").read_text()
    assert "data/train_prompts_truncated" in metrics
    assert cli.datamodule.overflow_counts["train"].prompts_truncated == 16


@pytest.mark.parametrize("strategy", sorted(p.name for p in (ROOT / "configs" / "strategies").glob("*.yaml")))
def test_strategy_files_stack_on_a_method_config(strategy, capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                "--config", str(ROOT / "configs" / "strategies" / strategy), "--print_config")  # fmt: skip
    printed = capsys.readouterr().out
    expected = "strategy: ddp" if strategy.startswith("ddp") else "class_path: lit_posttrain.strategies.AtomicModelParallelStrategy"
    assert expected in printed and "class_path: lit_posttrain.methods.hpt.HPT" in printed


@pytest.mark.parametrize("config", ["quickstart.yaml", "grpo.yaml", "opd.yaml", "sept.yaml", "hpt.yaml"])
def test_the_vllm_engine_file_stacks_on_every_sampling_config(config, capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", "--config", str(ROOT / "configs" / config),
                "--config", str(ROOT / "configs" / "engines" / "vllm.yaml"), "--print_config")  # fmt: skip
    printed = capsys.readouterr().out
    assert "class_path: lit_posttrain.rollout.vllm.VLLMEngine" in printed
    assert "max_new_tokens: 8" in printed, "the config's own engine settings are kept"


def test_swapping_the_method_names_the_arguments_it_drops(in_tmp, capsys):
    # GRPO's group_size and engine are arguments SFT does not take (the engine it does: kept).
    LitPostTrainCLI(args=["--config", TINY_GRPO, "--model.class_path", "lit_posttrain.methods.sft.SFT"], run=False)
    err = capsys.readouterr().err
    assert f"lit-posttrain: note: {TINY_GRPO} sets model.init_args.group_size for GRPO, but the run's model is SFT" in err
    assert "engine" not in err.split("note:")[1].split("for GRPO")[0]  # taken by SFT too: not dropped
    LitPostTrainCLI(args=["--config", TINY_GRPO], run=False)  # no swap, no note
    assert "note:" not in capsys.readouterr().err


def test_the_dropped_arguments_check_reads_configs_without_the_deprecated_call(in_tmp, monkeypatch):
    # jsonargparse warned of Path.get_content (deprecated in 4.49) in every run with a --config;
    # read_text is its replacement. It shows a deprecation once per process unless told otherwise.
    from jsonargparse import Path as ConfigPath

    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "all")
    config = LitPostTrainCLI(args=["--config", TINY_GRPO, "--model.class_path", "lit_posttrain.methods.sft.SFT"], run=False).config
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        notes = dropped_method_arguments(config)
    assert any("group_size" in note for note in notes)
    assert hasattr(ConfigPath, "read_text")  # the installed jsonargparse has the replacement


def test_progress_shows_as_plain_lines_when_the_output_is_not_a_terminal(in_tmp, capsys, caplog):
    # Under pytest stdout is not a terminal, as when a run's output goes to a file.
    caplog.set_level(logging.INFO)  # Lightning's info lines, which a run prints
    LitPostTrainCLI(
        args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "3", "--export", "false",
              "--trainer.callbacks+", "lit_posttrain.callbacks.progress.StepProgressBar",
              "--trainer.callbacks.plain_every_s", "0",
              "--trainer.callbacks+", str(ROOT / "callbacks" / "evaluation.yaml"), "--trainer.callbacks.every_n_steps", "1",
              "--trainer.callbacks.max_examples", "4", "--trainer.callbacks.samples", "0", "--trainer.callbacks.k", "[]"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "GPU available" in caplog.text and "Tip:" not in caplog.text  # Lightning's advertisements are dropped
    lines = [line for line in out.splitlines() if " s/step" in line]
    assert [line.split(":")[0] for line in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    assert all(" s/step, " in line and "reward " in line for line in lines), lines
    # The run summary gives the accuracy curve, not only its ends.
    (curve,) = [line for line in out.splitlines() if line.strip().startswith("by step:")]
    assert [point.split(":")[0] for point in curve.split("by step: ")[1].split(", ")] == ["0", "1", "2", "3"]
