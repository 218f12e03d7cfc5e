"""Checking one field of a row: the error names the row (`where`, e.g. "data/train.jsonl: row 7")
and the field, e.g. ``data/train.jsonl: row 7: field 'question': expected a non-empty string, got
int 5``; and taking a field a column mapping names (`columns: {answer: reward_model.ground_truth}`)."""

from __future__ import annotations

import math
from typing import Any

from lit_posttrain.data.task import DataError


def describe(value: Any) -> str:
    """`int 5`, `bytes b'\\xff'`: the type and a truncated repr, for error messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def check_text(value: Any, where: str, field: str, *, allow_blank: bool = False) -> str:
    """`value` as a string, or a `DataError` naming `where` and `field`."""
    expected = "a string" if allow_blank else "a non-empty string"
    if isinstance(value, bytes):
        # Parquet hands back string columns that hold invalid UTF-8 as bytes.
        raise DataError(f"{where}: field {field!r}: expected {expected}, got {describe(value)} (undecodable text?)")
    if not isinstance(value, str) or (not allow_blank and not value.strip()):
        raise DataError(f"{where}: field {field!r}: expected {expected}, got {describe(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        # A JSON "\ud800" escape decodes to a lone surrogate, which no tokenizer can encode.
        raise DataError(f"{where}: field {field!r}: undecodable text ({err.reason} at character {err.start})") from None
    return value


def required(row: dict, field: str, where: str) -> Any:
    # Loaders that build a table (datasets) fill a column absent from a row with None, so a null
    # and a missing key are the same error.
    value = row.get(field)
    if value is None:
        raise DataError(f"{where}: field {field!r}: missing or null (the row has: {present_fields(row)})")
    return value


def present_fields(row: dict) -> str:
    """The row's non-null fields, for an error saying one is missing."""
    return ", ".join(str(k) for k, v in row.items() if v is not None) or "no fields"


def scalar_text(value: Any, where: str, field: str) -> str | None:
    """An answer as the verifiers compare it, a string: datasets store numeric answers as numbers
    (`42`, `2.5`), and CSV readers make numbers of them; a list, a dict or NaN is refused."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return check_text(value, where, field)


def at_path(row: dict, path: str) -> Any:
    """The value at a dotted `path` into nested dicts (`reward_model.ground_truth`); a column whose
    own name has dots is found first. None where anything along the path is missing."""
    if path in row:
        return row[path]
    value: Any = row
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value
