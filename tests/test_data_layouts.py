"""Users' own data as TRL and verl users have it: TRL's conversational rows, verl's parquet layout,
CSV with its own column names, globs and folders of shards, `save_to_disk` folders, hub options,
`max_samples`, answers of any scalar type; each layout trains two GRPO steps through the CLI."""

import csv
import json
import math
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_posttrain.cli import LitPostTrainCLI
from lit_posttrain.data.files import FileTask
from lit_posttrain.data.loaders import load_examples
from lit_posttrain.data.task import DataError

TINY_GRPO = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_grpo.yaml")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def trl_rows(n: int, start: int = 0) -> list[dict]:
    """TRL's conversational prompt-completion rows with a numeric answer."""
    return [
        {"prompt": [{"role": "system", "content": "Be brief."}, *user(f"What is {i} + 1?")],
         "completion": [{"role": "assistant", "content": str(i + 1)}], "answer": i + 1}
        for i in range(start, start + n)
    ]  # fmt: skip


def verl_rows(n: int) -> list[dict]:
    return [
        {"data_source": "openai/gsm8k", "prompt": user(f"What is {i} + 2?"), "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": str(i + 2)}, "extra_info": {"split": "train", "index": i}}
        for i in range(n)
    ]  # fmt: skip


def write_csv(path: Path, n: int) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question", "final_answer"])
        writer.writerows([i, f"Half of {2 * i + 1}?", (2 * i + 1) / 2] for i in range(n))
    return path


# --- each layout, as examples ---------------------------------------------------------------------


def test_trl_conversational_rows_keep_the_chat_and_the_demonstration(tmp_path):
    first = load_examples(str(write_jsonl(tmp_path / "trl.jsonl", trl_rows(2))))[0]
    assert first.messages == [{"role": "system", "content": "Be brief."}, *user("What is 0 + 1?")]
    assert (first.demonstration, first.answer) == ("1", "1")  # the integer answer as the verifiers compare it
    prompt_only = load_examples(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": user("Hi?"), "answer": 2.5}])))[0]
    assert (prompt_only.messages, prompt_only.answer, prompt_only.demonstration) == (user("Hi?"), "2.5", None)


def test_verls_parquet_layout(tmp_path):
    pq.write_table(pa.Table.from_pylist(verl_rows(3)), tmp_path / "train.parquet")
    examples = load_examples(str(tmp_path / "train.parquet"))
    assert [ex.answer for ex in examples] == ["2", "3", "4"]
    assert examples[0].messages == user("What is 0 + 2?") and examples[0].demonstration is None
    assert examples[1].metadata["data_source"] == "openai/gsm8k" and examples[1].metadata["extra_info"]["index"] == 1
    rows = verl_rows(2)
    del rows[1]["reward_model"]["ground_truth"]
    write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: field 'reward_model.ground_truth': missing"):
        load_examples(str(tmp_path / "bad.jsonl"))


def test_csv_with_its_own_column_names_and_float_answers(tmp_path):
    source = str(write_csv(tmp_path / "halves.csv", 3))
    examples = load_examples(source, columns={"prompt": "question", "answer": "final_answer"})
    assert [(ex.messages, ex.answer) for ex in examples] == [(user(f"Half of {2 * i + 1}?"), str((2 * i + 1) / 2)) for i in range(3)]
    assert examples[2].source == f"{source}: row 3" and examples[2].metadata == {"id": 2}
    with pytest.raises(DataError, match=r"cannot tell the row format from the columns \['id', 'question', 'final_answer'\]"):
        load_examples(source)  # without the mapping nothing says which column is the prompt
    with pytest.raises(DataError, match=r"halves\.csv: row 1: column 'questoin' \(mapped to 'prompt' by `columns`\): missing"):
        load_examples(source, columns={"prompt": "questoin"})
    with pytest.raises(ValueError, match=r"columns: unknown field\(s\) \['promt'\]"):
        FileTask(source, columns={"promt": "question"})


def test_a_mapping_reads_into_nested_columns(tmp_path):
    rows = [{"q": user(f"{i}?"), "meta": {"solution": {"final": i}}} for i in range(2)]
    examples = load_examples(str(write_jsonl(tmp_path / "nested.jsonl", rows)), columns={"prompt": "q", "answer": "meta.solution.final"})
    assert [ex.answer for ex in examples] == ["0", "1"]


def test_globs_and_folders_of_shards_name_each_rows_own_file(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist(trl_rows(2)), shards / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(trl_rows(2, start=2)), shards / "train-00001-of-00002.parquet")
    (shards / "README.md").write_text("not data")
    by_glob = load_examples(str(shards / "train-*.parquet"))
    assert [ex.answer for ex in by_glob] == ["1", "2", "3", "4"]
    assert by_glob[2].source == f"{shards / 'train-00001-of-00002.parquet'}: row 1"
    assert [ex.answer for ex in load_examples(str(shards))] == ["1", "2", "3", "4"]
    assert [ex.answer for ex in load_examples(str(shards), limit=3)] == ["1", "2", "3"]
    assert FileTask(str(shards / "train-*.parquet")).name == "train"
    with pytest.raises(DataError, match="the pattern matches no file"):
        load_examples(str(shards / "test-*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: a folder with no \.jsonl, \.json, \.parquet or \.csv file"):
        load_examples(str(tmp_path / "empty"))


def test_save_to_disk_folders_and_their_splits(tmp_path):
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(verl_rows(6)), "validation": datasets.Dataset.from_list(trl_rows(2, start=20))})
    splits.save_to_disk(str(tmp_path / "saved"))
    task = FileTask(str(tmp_path / "saved"), eval=str(tmp_path / "saved"), eval_split="validation")
    assert len(task.train_examples()) == 6 and [ex.answer for ex in task.eval_examples()] == ["21", "22"]
    assert task.train_examples()[0].source == f"{tmp_path / 'saved'}[train]: row 1"
    with pytest.raises(DataError, match=r"saved\[test\]: no split 'test'; the folder has \['train', 'validation'\]"):
        FileTask(str(tmp_path / "saved"), eval=str(tmp_path / "saved")).eval_examples()
    datasets.Dataset.from_list(trl_rows(3)).save_to_disk(str(tmp_path / "one"))
    assert len(load_examples(str(tmp_path / "one"))) == 3


def test_hub_datasets_take_their_config_split_and_revision(monkeypatch):
    calls = []

    def load_dataset(name, config=None, split=None, revision=None):
        calls.append((name, config, split, revision))
        return datasets.Dataset.from_list(verl_rows(4) if split.startswith("train") else trl_rows(4, start=10))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    task = FileTask("owner/maths:hard", eval="owner/maths:hard", train_split="train[:50%]", eval_split="dev", revision="v1.0", max_samples=3)
    assert (len(task.train_examples()), len(task.eval_examples())) == (3, 3)
    assert task.train_examples()[0].source == "owner/maths:hard[train[:50%]]: row 1"
    assert calls == [("owner/maths", "hard", "train[:50%]", "v1.0"), ("owner/maths", "hard", "dev", "v1.0")]


def test_max_samples_reads_at_most_that_many_rows(tmp_path):
    source = str(write_jsonl(tmp_path / "many.jsonl", trl_rows(50)))
    task = FileTask(source, max_samples=20, eval_fraction=0.25)
    assert (len(task.train_examples()), len(task.eval_examples())) == (15, 5)
    with pytest.raises(ValueError, match="max_samples must be at least 1"):
        FileTask(source, max_samples=0)


# --- each layout trains through the CLI -----------------------------------------------------------


def _layouts(tmp_path: Path) -> dict[str, list[str]]:
    write_jsonl(tmp_path / "trl.jsonl", trl_rows(16))
    pq.write_table(pa.Table.from_pylist(verl_rows(16)), tmp_path / "verl.parquet")
    write_csv(tmp_path / "halves.csv", 16)
    (tmp_path / "shards").mkdir()
    for k in range(2):
        pq.write_table(pa.Table.from_pylist(trl_rows(8, start=8 * k)), tmp_path / "shards" / f"train-{k}.parquet")
    datasets.Dataset.from_list(verl_rows(16)).save_to_disk(str(tmp_path / "saved"))
    return {
        "trl conversational jsonl": ["--data.task.train", "trl.jsonl"],
        "verl parquet": ["--data.task.train", "verl.parquet"],
        "csv with a column mapping": ["--data.task.train", "halves.csv", "--data.task.columns", '{"prompt": "question", "answer": "final_answer"}'],
        "parquet glob": ["--data.task.train", "shards/train-*.parquet"],
        "folder of shards": ["--data.task.train", "shards"],
        "save_to_disk folder": ["--data.task.train", "saved", "--data.task.max_samples", "12"],
    }


@pytest.mark.parametrize(
    "layout", ["trl conversational jsonl", "verl parquet", "csv with a column mapping", "parquet glob", "folder of shards", "save_to_disk folder"]
)
def test_each_layout_trains_two_grpo_steps_through_the_cli(in_tmp, layout):
    args = _layouts(in_tmp)[layout]
    cli = LitPostTrainCLI(
        args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "2", "--export", "false",
              "--data.task", "lit_posttrain.data.files.FileTask", "--data.task.eval_fraction", "0.25", *args],
    )  # fmt: skip
    assert cli.trainer.global_step == 2
    assert len(cli.datamodule.train_rows) == (9 if layout == "save_to_disk folder" else 12)
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
