"""Tasks (prompts + verifier + optional demonstrations), loaders for common dataset shapes, and
the DataModule every method shares."""

from lit_posttrain.data.arithmetic import Arithmetic
from lit_posttrain.data.batches import Batch, Row
from lit_posttrain.data.datamodule import TaskDataModule
from lit_posttrain.data.files import FileTask
from lit_posttrain.data.formats import GSM8K, MATH, Messages, PromptCompletion, RowFormat
from lit_posttrain.data.loaders import load_examples
from lit_posttrain.data.task import DataError, Example, Task

__all__ = [
    "GSM8K", "MATH", "Arithmetic", "Batch", "DataError", "Example", "FileTask", "Messages",
    "PromptCompletion", "Row", "RowFormat", "Task", "TaskDataModule", "load_examples",
]  # fmt: skip
