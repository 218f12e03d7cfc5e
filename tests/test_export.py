"""The model out of a run: `lit-posttrain export CKPT OUT` turns a checkpoint into a Hugging Face
folder (full, LoRA merged, LoRA adapters), `ExportEveryNSteps` writes one during training, and the
model's folder follows the run's folder whatever the logger. (vLLM loading an exported folder:
tests/test_vllm_engine.py.)"""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import Logger
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lit_posttrain.cli import LitPostTrainCLI, main

ROOT = Path(__file__).resolve().parents[1]
TINY_GRPO = str(ROOT / "configs" / "tiny_grpo.yaml")
CHECKPOINTS = [
    "--trainer.callbacks+", "lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last", "true",
    "--trainer.callbacks.save_top_k", "0", "--trainer.enable_checkpointing", "true",
]  # fmt: skip


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def fit(*args: str) -> LitPostTrainCLI:
    return LitPostTrainCLI(args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "2", *CHECKPOINTS, *args])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_writes_the_checkpoints_policy_as_transformers_loads_it(tmp_path, capsys):
    cli = fit()
    run = Path(cli.trainer.log_dir)
    main(["export", str(run / "checkpoints" / "last.ckpt"), str(tmp_path / "out")])
    assert "Exported" in capsys.readouterr().out
    assert same(weights(tmp_path / "out"), weights(run / "hf_model")), "the last checkpoint is the end of the run"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    trained = cli.model.policy.state_dict()
    assert all(torch.equal(p, trained[n]) for n, p in model.state_dict().items())
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()


def test_a_lora_checkpoint_exports_merged_or_as_adapters(tmp_path):
    """A LoRA checkpoint holds the adapters only (the base is rebuilt from `model:`): merged, it is
    the run's own merged export; as adapters, peft's folder, which loads onto the base to the same
    model."""
    from peft import PeftModel

    cli = fit("--model.init_args.lora", "{}")
    run = Path(cli.trainer.log_dir)
    last = str(run / "checkpoints" / "last.ckpt")
    main(["export", last, str(tmp_path / "merged")])  # the run's lora.merge_on_save: true
    assert same(weights(tmp_path / "merged"), weights(run / "hf_model"))
    main(["export", last, str(tmp_path / "adapters"), "--adapters"])
    config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert not (tmp_path / "adapters" / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(cli.model.model_folder)
    merged = PeftModel.from_pretrained(base, tmp_path / "adapters").merge_and_unload().state_dict()
    expected = weights(tmp_path / "merged")
    assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in expected)


def test_bad_checkpoints_are_refused_with_what_was_wrong(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "missing.ckpt: no such checkpoint" in capsys.readouterr().err
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "other.ckpt"), str(tmp_path / "out")])
    assert "not a checkpoint of a lit-posttrain run" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "folder"), str(tmp_path / "out")])
    assert "not a distributed checkpoint: it has no meta.pt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_model_is_exported_every_n_steps_keeping_the_newest(tmp_path):
    cli = fit(
        "--trainer.max_steps", "4", "--trainer.callbacks+", "lit_posttrain.callbacks.ExportEveryNSteps",
        "--trainer.callbacks.every_n_steps", "2", "--trainer.callbacks.keep", "1",
    )  # fmt: skip
    run = Path(cli.trainer.log_dir)
    assert sorted(p.name for p in (run / "hf_models").iterdir()) == ["step_4"]  # step_2 written, then dropped
    assert same(weights(run / "hf_models" / "step_4"), weights(run / "hf_model"))
    callback = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ExportEveryNSteps")
    assert [p.name for p in callback.written] == ["step_2", "step_4"]


class RunIdLogger(Logger):
    """A logger like W&B's: a run id for a version, its save_dir the working folder."""

    name, version, save_dir = "project", "run-a1b2", "."

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_the_model_follows_the_run_folder_of_any_logger(tmp_path):
    """Not `./hf_model` (Lightning's log_dir for such loggers, the same for every run): the run's
    folder, where Lightning puts its checkpoints too."""
    cli = fit("--trainer.logger", "test_export.RunIdLogger")
    run = tmp_path / "project" / "run-a1b2"
    assert (run / "hf_model" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "hf_model").exists()
    assert cli.trainer.global_step == 2
