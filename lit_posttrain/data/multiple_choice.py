"""Multiple-choice probe sets (question, choices, answer index), scored by the log-likelihood of
each option: no generation, so a probe is cheap and deterministic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lit_posttrain.data.fields import check_text, describe
from lit_posttrain.data.sources import read_rows
from lit_posttrain.data.task import DataError

BUILTIN_PROBES = {"general_knowledge": Path(__file__).parent / "probes" / "general_knowledge.jsonl"}


@dataclass(frozen=True)
class MultipleChoiceItem:
    question: str
    choices: tuple[str, ...]
    answer: int
    source: str = ""


def load_multiple_choice(source: str, limit: int | None = None) -> list[MultipleChoiceItem]:
    """Items from `builtin:general_knowledge` or a local .jsonl / .json / .parquet file (read
    through `datasets` where the format allows) whose rows hold `question` (str), `choices` (a list
    of at least two distinct strings) and `answer` (the 0-based index of the right choice)."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_PROBES:
            raise DataError(f"unknown built-in probe set {source!r}; built-in: {', '.join('builtin:' + n for n in BUILTIN_PROBES)}")
        source = str(BUILTIN_PROBES[name])
    _, rows = read_rows(source, "test", limit)
    if not rows:
        raise DataError(f"{source}: no rows")
    return [_item(row, where) for where, row in rows]


def _item(row: dict, where: str) -> MultipleChoiceItem:
    for field in ("question", "choices", "answer"):
        if field not in row:
            raise DataError(f"{where}: missing field {field!r} (a multiple-choice row has question, choices, answer)")
    question = check_text(row["question"], where, "question")
    choices = row["choices"]
    if not isinstance(choices, list | tuple) or len(choices) < 2:
        raise DataError(f"{where}: field 'choices': expected a list of at least 2 strings, got {describe(choices)}")
    choices = tuple(check_text(c, where, f"choices[{i}]") for i, c in enumerate(choices))
    if len(set(choices)) != len(choices):
        raise DataError(f"{where}: field 'choices': the choices must differ, got {list(choices)}")
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataError(f"{where}: field 'answer': expected an index from 0 to {len(choices) - 1}, got {describe(answer)}")
    return MultipleChoiceItem(question, choices, answer, where)
