"""Tasks (prompts + verifier + optional demonstrations), loaders for common dataset shapes, and
the DataModule every method shares.

Names are imported on first use: a reward-scoring worker process that unpickles an `Example` or a
task imports its few modules, not the DataModule's torch and Lightning (seconds and ~400 MB).
"""

import importlib
from typing import TYPE_CHECKING

_MODULES = {
    "Arithmetic": "arithmetic", "Batch": "batches", "Row": "batches", "TaskDataModule": "datamodule",
    "FileTask": "files", "GSM8K": "formats", "MATH": "formats", "Messages": "formats",
    "PromptCompletion": "formats", "RowFormat": "formats", "load_examples": "loaders", "DataError": "task",
    "Example": "task", "Task": "task",
}  # fmt: skip

__all__ = [
    "GSM8K", "MATH", "Arithmetic", "Batch", "DataError", "Example", "FileTask", "Messages",
    "PromptCompletion", "Row", "RowFormat", "Task", "TaskDataModule", "load_examples",
]  # fmt: skip


def __getattr__(name: str):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)


if TYPE_CHECKING:
    from lit_posttrain.data.arithmetic import Arithmetic
    from lit_posttrain.data.batches import Batch, Row
    from lit_posttrain.data.datamodule import TaskDataModule
    from lit_posttrain.data.files import FileTask
    from lit_posttrain.data.formats import GSM8K, MATH, Messages, PromptCompletion, RowFormat
    from lit_posttrain.data.loaders import load_examples
    from lit_posttrain.data.task import DataError, Example, Task
