"""The completions a run samples, shown where its logger shows tables (TRL's `log_completions`,
verl's logged generations): what the reward curve cannot say about what the model writes."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from lit_posttrain.callbacks.cadence import crossed_multiple
from lit_posttrain.groups import dense_groups
from lit_posttrain.run_dir import run_dir

COLUMNS = ["step", "prompt", "completion", "reward", "answer", "truncated"]


class LogCompletions(L.Callback):
    """Every `every_n_steps` optimizer steps, the first `max_rows` completions the step trained on
    (process 0's), with their prompt, reward, reference answer and whether they were cut at
    max_new_tokens: appended to `completions.csv` in the run's folder, and given to every logger
    that shows tables (TensorBoard: a text table under `completions`; W&B: a table `completions`;
    MLflow: `completions/step_<N>.json` among the run's artifacts). For methods that sample
    (GRPO, OPD, SePT, HPT); the reward is empty where the method scores none (OPD, SePT).

    Args:
        every_n_steps: optimizer steps between logged tables.
        max_rows: completions logged each time.
    """

    def __init__(self, every_n_steps: int = 10, max_rows: int = 8) -> None:
        if every_n_steps < 1 or max_rows < 1:
            raise ValueError(f"LogCompletions every_n_steps and max_rows must be >= 1, got {every_n_steps} and {max_rows}")
        self.every_n_steps, self.max_rows = every_n_steps, max_rows

    def setup(self, trainer: L.Trainer, module, stage: str) -> None:
        if stage == "fit" and not hasattr(module, "rollouts_for"):
            raise ValueError(
                f"LogCompletions logs sampled completions, and {type(module).__name__} samples none (it trains on "
                "demonstrations): remove the callback, or use a method that samples (GRPO, OPD, SePT, HPT)"
            )

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        if not crossed_multiple(trainer, module, self.every_n_steps):
            return
        step = trainer.global_step
        folder = run_dir(trainer)  # a collective: every rank asks
        rollout = getattr(module, "last_rollout", None)
        if not trainer.is_global_zero or rollout is None:
            return
        table = self.rows(module, rollout, batch.rows, step)
        write_csv(folder / "completions.csv", table)
        for logger in trainer.loggers:
            show(logger, table, step)

    def rows(self, module, rollout, batch_rows, step: int) -> list[dict]:
        """The table's rows: group g of the rollout answers `batch_rows[g]` (OnPolicyModule.rollouts_for)."""
        group_of_B, _ = dense_groups(rollout.group_B)
        table = []
        for b in range(min(self.max_rows, len(rollout))):
            row = batch_rows[int(group_of_B[b])]
            reward = None if rollout.reward_B is None else round(float(rollout.reward_B[b]), 4)
            table.append({
                "step": step,
                "prompt": module.tokenizer.decode(row.prompt_ids, skip_special_tokens=True),
                "completion": rollout.completions[b],
                "reward": "" if reward is None else reward,
                "answer": "" if row.example.answer is None else row.example.answer,
                "truncated": bool(rollout.truncated_B[b]),
            })  # fmt: skip
        return table


def write_csv(path: Path, table: list[dict]) -> None:
    """Append `table` to the CSV file at `path` (with its header when the file is new)."""
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(table)
        f.flush()
        os.fsync(f.fileno())


def show(logger, table: list[dict], step: int) -> None:
    """`table` in `logger`'s own table view, where it has one (the CSV logger's is the file)."""
    if isinstance(logger, TensorBoardLogger):
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in table]
        logger.experiment.add_text("completions", "\n".join(lines), global_step=step)
    elif isinstance(logger, WandbLogger):
        # At W&B's own step (the table has the run's): a step below one it has seen would be dropped.
        logger.log_table(key="completions", columns=COLUMNS, data=[[r[c] for c in COLUMNS] for r in table])
    elif isinstance(logger, MLFlowLogger):
        data = {c: [r[c] for r in table] for c in COLUMNS}
        logger.experiment.log_table(logger.run_id, data=data, artifact_file=f"completions/step_{step}.json")


def _cell(value) -> str:
    # A Markdown table cell: one line, its pipes escaped.
    return str(value).replace("|", "\\|").replace("\n", "<br>")
