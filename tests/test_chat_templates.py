"""A chat template from the config (in place of the tokenizer's, or given arguments such as
`enable_thinking`), said in the run's first lines with the first prompt as the model sees it."""

import logging
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lit_posttrain.cli import LitPostTrainCLI

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
TEMPLATE = "{% if enable_thinking %}THINK {% endif %}Q: {{ messages[-1]['content'] }} A:"


def fit(*args: str) -> LitPostTrainCLI:
    return LitPostTrainCLI(args=["fit", "--config", TINY, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", *args])


def test_a_template_from_the_config_formats_every_prompt_and_travels_with_the_model(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        cli = fit("--data.chat_template", TEMPLATE, "--export_to", "model")
    tokenizer = cli.datamodule.tokenizer
    first = cli.datamodule.train_rows[0]
    assert tokenizer.decode(first.prompt_ids) == f"Q: {first.example.messages[-1]['content']} A:"
    announced = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prompts: ")]
    assert len(announced) == 1 and "the chat template data.chat_template gives" in announced[0]
    assert "Q: " in announced[0].split("as the model sees it:")[1]
    assert AutoTokenizer.from_pretrained(tmp_path / "model").chat_template == TEMPLATE


def test_template_arguments_reach_the_template_from_a_jinja_file(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.jinja").write_text(TEMPLATE)
    with caplog.at_level(logging.INFO):
        cli = fit("--data.chat_template", "mine.jinja", "--data.chat_template_kwargs", '{"enable_thinking": true}', "--export", "false")
    first = cli.datamodule.train_rows[0]
    assert cli.datamodule.tokenizer.decode(first.prompt_ids).startswith("THINK Q: ")
    assert any("(mine.jinja), with {'enable_thinking': True}" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("value", "message"),
    [("nope.jinja", "data.chat_template: nope.jinja: no such file"),
     ("chatml", "is neither a Jinja template nor a path"),
     ("{{ messages[0]['content'] | no_such_filter }}", "data.chat_template: formatting .* failed")],
)  # fmt: skip
def test_a_bad_template_stops_the_run_saying_why(tmp_path, monkeypatch, value, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        fit("--data.chat_template", value, "--export", "false")
