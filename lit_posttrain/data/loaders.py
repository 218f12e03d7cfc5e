"""Loading `Example`s from a source (`lit_posttrain.data.sources`: files, globs, folders,
`save_to_disk` folders, hub datasets): its rows, their columns renamed where the user maps them,
converted by a row format (`lit_posttrain.data.formats`, detected from the columns unless given),
then the prompt options applied. Every row is validated when the source is loaded, so a bad row
fails at start-up with its location rather than mid-training.
"""

from __future__ import annotations

import dataclasses
import string

from lit_posttrain.data.fields import at_path, present_fields
from lit_posttrain.data.formats import DEFAULT_FORMATS, RowFormat, detect_format
from lit_posttrain.data.sources import Rows, read_rows
from lit_posttrain.data.task import DataError, Example

# The fields the formats read, which a column mapping may fill.
FIELDS = tuple(dict.fromkeys(c for f in DEFAULT_FORMATS for c in (*f.columns, *f.optional)))


def load_examples(
    source: str,
    split: str = "train",
    format: RowFormat | None = None,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    limit: int | None = None,
    columns: dict[str, str] | None = None,
    revision: str | None = None,
) -> list[Example]:
    """Load and validate the rows of `source` as `Example`s.

    Args:
        source: A local .jsonl/.json/.parquet/.csv file, a glob or a folder of them, a
            `save_to_disk` folder, or a hub dataset id (`owner/name[:config]`).
        split: The split of a hub dataset or a `save_to_disk` folder; files are a single split.
        format: How rows become examples; detected from the column names when None.
        system_prompt: Prepended to every prompt as a system message.
        prompt_template: A `str.format` template with a `{prompt}` field applied to the last user
            turn, e.g. "{prompt}\\nReply with only the number." (write literal braces as `{{ }}`).
        limit: Read only the first `limit` rows.
        columns: Which of the source's columns fill which field the formats read, e.g.
            `{"prompt": "question", "answer": "reward_model.ground_truth"}` (a dotted name reads
            into nested dicts).
        revision: The hub dataset's branch, tag or commit.

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
    check_columns(columns)
    label, rows = read_rows(source, split, limit, revision)
    if columns:
        rows = map_columns(rows, columns)
    if format is None:
        names = list(dict.fromkeys(key for _, row in rows for key in row))
        format = detect_format(names, label)
    examples = [format.to_example(row, where) for where, row in rows]
    return [_apply_prompt_options(ex, system_prompt, prompt_template) for ex in examples]


def check_columns(columns: dict[str, str] | None) -> None:
    """Refuse a column mapping that fills a field no format reads (a typo would be ignored)."""
    unknown = sorted(set(columns or ()) - set(FIELDS))
    if unknown:
        raise ValueError(f"columns: unknown field(s) {unknown}: a mapping fills one of {list(FIELDS)} from a column")


def map_columns(rows: Rows, columns: dict[str, str]) -> Rows:
    """Each row with the fields `columns` names (`field: column`) moved from the user's columns,
    so that the format is detected from the fields; the row's other columns stay (the example's
    metadata keeps those its format does not read)."""
    mapped: Rows = []
    for where, row in rows:
        row = dict(row)
        for field, column in columns.items():
            value = at_path(row, column)
            if value is None:
                raise DataError(
                    f"{where}: column {column!r} (mapped to {field!r} by `columns`): missing or null (the row has: {present_fields(row)})"
                )
            row.pop(column, None)
            row[field] = value
        mapped.append((where, row))
    return mapped


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
