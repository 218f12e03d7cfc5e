"""Loading `Example`s from local files and Hugging Face hub datasets.

Accepted sources: a local `.jsonl` file (one JSON object per line), a local `.json` file (an array
of objects, or JSON lines), a local `.parquet` file, or a hub dataset id (`name`, `owner/name` or
`owner/name:config`). Every row is validated when the file is loaded, so a bad row fails at
start-up with its location rather than mid-training.

Rows are numbered from 1. In a JSONL file the row number is the line number: blank lines are
skipped but still counted, so "row 7" is what an editor shows as line 7.

JSONL is parsed here rather than by `datasets`: every line has to be decoded and parsed anyway to
name the line of a bad byte or bad JSON, and `datasets`' table building would then lose what the
errors need (a missing key becomes null, mixed int/float columns become floats, and a column of
mixed types in a file with blank lines fails without naming a row). `.json` and `.parquet` files
and hub datasets are read with `datasets.load_dataset`.
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import json
import re
import string
from pathlib import Path
from typing import Any

from lit_posttrain.data.formats import RowFormat, describe, detect_format
from lit_posttrain.data.task import DataError, Example

ACCEPTED_FORMS = (
    "a local .jsonl file (one JSON object per line)",
    "a local .json file (an array of objects or JSON lines)",
    "a local .parquet file",
    "a hub dataset id: name, owner/name or owner/name:config",
)
# Suffixes that mark a source as meant to be a file even when it does not exist; hub ids may hold
# dots ("owner/data-v1.5"), so any suffix at all would be too broad.
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst", ".zip")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?(?::[\w.-]+)?")
# `surrogateescape` maps each undecodable byte to one of these code points.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")

Rows = list[tuple[str, dict]]  # (where, row) pairs, `where` being e.g. "data/train.jsonl: row 7"


def load_examples(
    source: str,
    split: str = "train",
    format: RowFormat | None = None,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Load and validate the rows of `source` as `Example`s.

    Args:
        source: A local .jsonl/.json/.parquet file or a hub dataset id (`owner/name[:config]`).
        split: The hub split to load; a local file is a single split and ignores it.
        format: How rows become examples; detected from the column names when None.
        system_prompt: Prepended to every prompt as a system message.
        prompt_template: A `str.format` template with a `{prompt}` field applied to the last user
            turn, e.g. "{prompt}\\nReply with only the number." (write literal braces as `{{ }}`).
        limit: Read only the first `limit` rows.

    Raises:
        DataError: The source is missing or unreadable, or a row is malformed; the message names
            the file, the row and the field.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 or None, got {limit}")
    if system_prompt is not None and not system_prompt.strip():
        raise ValueError("system_prompt is empty; pass None for no system message")
    if prompt_template is not None:
        _check_template(prompt_template)
    label, rows = read_rows(source, split, limit)
    if format is None:
        columns = list(dict.fromkeys(key for _, row in rows for key in row))
        format = detect_format(columns, label)
    examples = [format.to_example(row, where) for where, row in rows]
    return [_apply_prompt_options(ex, system_prompt, prompt_template) for ex in examples]


def read_rows(source: str, split: str, limit: int | None) -> tuple[str, Rows]:
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in (".jsonl", ".json", ".parquet"):
            raise DataError(
                f"{source}: unsupported file type {suffix or '(no suffix)'!r}; accepted: {_forms()}"
            )
        if path.stat().st_size == 0:
            raise DataError(f"{source}: empty file")
        if suffix == ".jsonl":
            rows = _read_jsonl(path, source, limit)
        else:
            if suffix == ".json":
                _check_utf8(path.read_bytes(), source)
            rows = _read_with_datasets(suffix[1:], str(path), source, limit)
        label = source
    elif path.exists() or source.lower().endswith(_FILE_SUFFIXES) or source.startswith(("/", ".", "~")):
        raise DataError(f"{source}: no such file; accepted: {_forms()}")
    elif _HUB_ID.fullmatch(source):
        label = f"{source}[{split}]"
        rows = _read_hub(source, split, label, limit)
    else:
        raise DataError(f"{source!r} is neither an existing file nor a hub dataset id; accepted: {_forms()}")
    if not rows:
        raise DataError(f"{label}: empty: no rows")
    return label, rows


def _forms() -> str:
    return "; ".join(ACCEPTED_FORMS)


def _read_jsonl(path: Path, label: str, limit: int | None) -> Rows:
    rows: Rows = []
    with path.open("rb") as lines:
        for lineno, raw in enumerate(lines, 1):
            if len(rows) == limit:
                break
            if lineno == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)  # editors on Windows add one
            if raw.strip():
                where = f"{label}: row {lineno}"
                rows.append((where, _parse_json_line(raw, where)))
    return rows


def _parse_json_line(raw: bytes, where: str) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _undecodable(raw, err, where) from None
    # Without the line's end: an error there (a missing '}') is then reported at the row's last
    # column, not at "column 1" of a next line the file does not have.
    text = text.rstrip("\r\n")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        at_end = " (the end of the row)" if err.pos >= len(text) else ""
        raise DataError(f"{where}: invalid JSON: {err.msg} at column {err.colno}{at_end}") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {describe(row)}")
    return row


def _undecodable(raw: bytes, err: UnicodeDecodeError, where: str) -> DataError:
    """The error for a line with invalid UTF-8, naming the field that holds the bad byte when the
    line is otherwise valid JSON."""
    detail = f"undecodable text: invalid UTF-8 byte {raw[err.start]:#04x} at column {err.start + 1}"
    try:
        row = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError:
        return DataError(f"{where}: {detail}")
    field = _field_with_escaped_byte(row)
    return DataError(f"{where}: field {field!r}: {detail}" if field else f"{where}: {detail}")


def _field_with_escaped_byte(value: Any, path: str = "") -> str | None:
    if isinstance(value, str):
        return path if _ESCAPED_BYTE.search(value) else None
    if isinstance(value, dict):
        items = [(f"{path}.{key}" if path else key, key, item) for key, item in value.items()]
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", "", item) for i, item in enumerate(value)]
    else:
        return None
    for sub_path, key, item in items:
        if _ESCAPED_BYTE.search(key) or (sub_path := _field_with_escaped_byte(item, sub_path)):
            return sub_path
    return None


def _check_utf8(data: bytes, label: str) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{label}: line {line}: undecodable text: invalid UTF-8 byte {data[err.start]:#04x}"
        ) from None


def _read_with_datasets(builder: str, data_files: str, label: str, limit: int | None) -> Rows:
    import datasets  # slow to import; only loading needs it

    try:
        dataset = datasets.load_dataset(builder, data_files=data_files, split="train")
    except Exception as err:  # datasets raises many types; all mean "this file cannot be read"
        raise DataError(f"{label}: cannot read it as {builder}: {err}") from err
    return _dataset_rows(dataset, label, limit)


def _read_hub(source: str, split: str, label: str, limit: int | None) -> Rows:
    import datasets

    name, _, config = source.partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # not found, no network, unknown config or split
        raise DataError(f"{label}: cannot load the hub dataset: {err}") from err
    return _dataset_rows(dataset, label, limit)


def _dataset_rows(dataset: Any, label: str, limit: int | None) -> Rows:
    return [(f"{label}: row {i}", row) for i, row in enumerate(itertools.islice(dataset, limit), 1)]


def _check_template(template: str) -> None:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ValueError(
            f"prompt_template {template!r}: {err} (write literal braces as {{{{ and }}}})"
        ) from None
    if fields != {"prompt"}:
        raise ValueError(
            f"prompt_template {template!r} must use exactly one field, {{prompt}}, got {sorted(fields)} "
            "(write literal braces as {{ and }})"
        )


def _apply_prompt_options(example: Example, system_prompt: str | None, template: str | None) -> Example:
    if system_prompt is None and template is None:
        return example
    messages = [dict(m) for m in example.messages]
    if template is not None:
        # Formats guarantee the prompt ends with the user turn the model answers.
        messages[-1]["content"] = template.format(prompt=messages[-1]["content"])
    if system_prompt is not None:
        if messages[0]["role"] == "system":
            raise DataError(
                f"{example.source}: field 'messages': the row has its own system message and "
                "system_prompt is set as well; use one or the other"
            )
        messages.insert(0, {"role": "system", "content": system_prompt})
    return dataclasses.replace(example, messages=messages)
