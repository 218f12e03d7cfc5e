"""What a run shows beyond its metrics: sampled completions as a table (`LogCompletions`), and the
run through W&B and MLflow offline (W&B's offline mode, MLflow's local file store; the
`loggers` extra, which `scripts/setup.sh` installs): the metrics and the table reach them, and the model lands in the run's folder."""

import csv
import json
import time
from pathlib import Path

import pytest

from lit_posttrain.cli import LitPostTrainCLI

ROOT = Path(__file__).resolve().parents[1]
TINY_GRPO = str(ROOT / "configs" / "tiny_grpo.yaml")
COMPLETIONS = [
    "--trainer.callbacks+", "lit_posttrain.callbacks.LogCompletions", "--trainer.callbacks.every_n_steps", "2",
    "--trainer.callbacks.max_rows", "3",
]  # fmt: skip


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network, whatever a test sets
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database or a server otherwise


def fit(*args: str) -> LitPostTrainCLI:
    return LitPostTrainCLI(args=["fit", "--config", TINY_GRPO, "--trainer.max_steps", "4", *args])


def test_sampled_completions_are_written_every_n_steps(tmp_path):
    cli = fit(*COMPLETIONS)
    with open(Path(cli.trainer.log_dir) / "completions.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["step"]) for r in table] == [2, 2, 2, 4, 4, 4]
    assert list(table[0]) == ["step", "prompt", "completion", "reward", "answer", "truncated"]
    rows = cli.datamodule.train_rows
    answers = {row.example.answer for row in rows}
    assert all(r["answer"] in answers for r in table)
    # tiny_grpo's reward: 1 where the reply starts with a digit.
    assert all(float(r["reward"]) == float(r["completion"][:1].isdigit()) for r in table)
    assert all(r["prompt"] and r["truncated"] in ("True", "False") for r in table)


def test_a_method_that_samples_nothing_is_refused_at_start_up():
    with pytest.raises(ValueError, match="LogCompletions logs sampled completions, and SFT samples none"):
        fit("--model.class_path", "lit_posttrain.methods.sft.SFT", *COMPLETIONS)


def test_a_run_through_weights_and_biases_offline(tmp_path):
    pytest.importorskip("wandb")
    cli = fit(
        "--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.init_args.project", "lit",
        "--trainer.logger.init_args.offline", "true", "--trainer.logger.init_args.save_dir", str(tmp_path / "wb"), *COMPLETIONS,
    )  # fmt: skip
    run_id = cli.trainer.logger.version
    run = tmp_path / "wb" / "lit" / run_id
    assert (run / "hf_model" / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    import wandb

    wandb.finish()  # the run's log is complete once the run ends (at the process's exit, in a real run)
    (offline,) = (tmp_path / "wb" / "wandb").glob(f"offline-run-*-{run_id}")
    # The history, a protocol-buffer log only wandb's servers read back: the metrics' names are in it.
    # wandb's own service process writes it; on a loaded machine it can land after finish() returns
    # (seen once in a full parallel run), so it is read until complete, for up to 60 s.
    keys = [key.encode() for key in ("train/loss", "train/reward", "train/grad_norm", "train/lr")]
    deadline = time.monotonic() + 60
    while not all(key in (history := next(offline.glob("run-*.wandb")).read_bytes()) for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert all(key in history for key in keys), [key for key in keys if key not in history]
    tables = [json.loads(p.read_text()) for p in sorted(offline.glob("files/media/table/completions_*.table.json"))]
    assert [[row[0] for row in t["data"]] for t in tables] == [[2, 2, 2], [4, 4, 4]]
    assert tables[0]["columns"] == ["step", "prompt", "completion", "reward", "answer", "truncated"]


def test_a_run_through_mlflow_to_a_local_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    cli = fit("--trainer.logger", "lightning.pytorch.loggers.MLFlowLogger", "--trainer.logger.init_args.tracking_uri", uri, *COMPLETIONS)
    logger = cli.trainer.logger
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(logger.run_id, "train/loss")] == [0, 1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(logger.run_id, "completions")}
    assert artifacts == {"completions/step_2.json", "completions/step_4.json"}
    run = tmp_path / "mlruns" / logger.experiment_id / logger.run_id  # the run's own folder in the store
    assert (run / "hf_model" / "model.safetensors").is_file() and (run / "config.yaml").is_file()


def test_the_completions_table_in_tensorboards_text_tab(tmp_path):
    """Where TensorBoard is installed (its own extra; CI runs without it, so this is skipped there)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli = fit("--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.init_args.save_dir", "tb", *COMPLETIONS)
    events = EventAccumulator(cli.trainer.logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("completions/text_summary")
    assert [t.step for t in texts] == [2, 4]
    table = texts[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| step | prompt | completion | reward | answer | truncated |") and table.count("\n") == 4


def test_what_the_completions_table_sends_to_tensorboard(monkeypatch):
    """Runs where TensorBoard is not installed (CI): the Markdown table handed to its writer's
    add_text, a completion's pipes and line breaks kept inside their cell."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from lit_posttrain.callbacks.completions import show

    sent = []
    writer = type("Writer", (), {"add_text": lambda self, tag, text, global_step: sent.append((tag, text, global_step))})()
    monkeypatch.setattr(TensorBoardLogger, "experiment", property(lambda self: writer))
    row = {"step": 3, "prompt": "1 + 1?", "completion": "a | b\nc", "reward": 1.0, "answer": "2", "truncated": False}
    show(object.__new__(TensorBoardLogger), [row], 3)  # not constructed: that needs tensorboard installed
    ((tag, text, step),) = sent
    assert (tag, step) == ("completions", 3)
    assert text.splitlines() == [
        "| step | prompt | completion | reward | answer | truncated |", "|---|---|---|---|---|---|",
        "| 3 | 1 + 1? | a \\| b<br>c | 1.0 | 2 | False |",
    ]  # fmt: skip
