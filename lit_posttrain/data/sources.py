"""Where a task's rows come from, read into `(where, row)` pairs, `where` naming the file and the
row for error messages ("data/train.jsonl: row 7").

Accepted sources: a local file (`.jsonl`, `.json`, `.parquet`, `.csv`); a glob of such files
(`data/train-*.parquet`); a folder of them (its shards, read in name order); a folder written by
`datasets`' `save_to_disk`; a hub dataset id (`name`, `owner/name` or `owner/name:config`, with a
split and a revision). Several files are read one by one, so each row is named by its own file.

Rows are numbered from 1. In a JSONL file the row number is the line number: blank lines are
skipped but still counted, so "row 7" is what an editor shows as line 7. In a CSV file row 1 is the
first row after the header.

JSONL is parsed here rather than by `datasets`: every line has to be decoded and parsed anyway to
name the line of a bad byte or bad JSON, and `datasets`' table building would then lose what the
errors need (a missing key becomes null, mixed int/float columns become floats, and a column of
mixed types in a file with blank lines fails without naming a row). The other kinds are read with
`datasets`.
"""

from __future__ import annotations

import codecs
import glob
import itertools
import json
import re
from pathlib import Path
from typing import Any

from lit_posttrain.data.fields import describe
from lit_posttrain.data.task import DataError

ACCEPTED_FORMS = (
    "a local .jsonl, .json, .parquet or .csv file",
    "a glob of such files (data/train-*.parquet)",
    "a folder of such files, or one written by datasets' save_to_disk",
    "a hub dataset id: name, owner/name or owner/name:config",
)
READERS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Suffixes that mark a source as meant to be a file even when it does not exist; hub ids may hold
# dots ("owner/data-v1.5"), so any suffix at all would be too broad.
_FILE_SUFFIXES = (*READERS, ".tsv", ".txt", ".arrow", ".gz", ".zst", ".zip")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?(?::[\w.-]+)?")
_SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes at a folder's top
# `surrogateescape` maps each undecodable byte to one of these code points.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")

Rows = list[tuple[str, dict]]  # (where, row) pairs


def read_rows(source: str, split: str = "train", limit: int | None = None, revision: str | None = None) -> tuple[str, Rows]:
    """The rows of `source` (at most `limit`) and a label for it. `split` and `revision` choose a
    hub dataset's split and version (a branch, tag or commit), and a `save_to_disk` folder's split."""
    path = Path(source).expanduser()
    if glob.has_magic(source):
        files = sorted(Path(f) for f in glob.glob(str(path), recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"{source}: the pattern matches no file; accepted: {_forms()}")
        label, rows = source, _read_files(files, source, limit)
    elif path.is_dir():
        if any((path / marker).is_file() for marker in _SAVED_MARKERS):
            label = f"{source}[{split}]"
            rows = _read_saved(path, split, label, limit)
        else:
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in READERS)
            if not files:
                raise DataError(f"{source}: a folder with no .jsonl, .json, .parquet or .csv file in it; accepted: {_forms()}")
            label, rows = source, _read_files(files, source, limit)
    elif path.is_file():
        label, rows = source, _read_files([path], source, limit)
    elif path.exists() or source.lower().endswith(_FILE_SUFFIXES) or source.startswith(("/", ".", "~")):
        raise DataError(f"{source}: no such file; accepted: {_forms()}")
    elif _HUB_ID.fullmatch(source):
        label = f"{source}[{split}]"
        rows = _read_hub(source, split, revision, label, limit)
    else:
        raise DataError(f"{source!r} is neither an existing file or folder nor a hub dataset id; accepted: {_forms()}")
    if not rows:
        raise DataError(f"{label}: empty: no rows")
    return label, rows


def _forms() -> str:
    return "; ".join(ACCEPTED_FORMS)


def _read_files(files: list[Path], source: str, limit: int | None) -> Rows:
    """Each file's rows, in turn, each named by its own file; several kinds may be mixed."""
    rows: Rows = []
    for path in files:
        kind = READERS.get(path.suffix.lower())
        # A single file is named as the user wrote it; the files of a glob or folder by their paths.
        label = source if len(files) == 1 and Path(source).expanduser() == path else str(path)
        if kind is None:
            raise DataError(f"{label}: unsupported file type {path.suffix or '(no suffix)'!r}; accepted: {_forms()}")
        if path.stat().st_size == 0:
            raise DataError(f"{label}: empty file")
        left = None if limit is None else limit - len(rows)
        if left == 0:
            break
        if kind == "jsonl":
            rows += _read_jsonl(path, label, left)
        else:
            if kind == "json":
                _check_utf8(path.read_bytes(), label)
            rows += _read_with_datasets(kind, str(path), label, left)
    return rows


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
        raise DataError(f"{label}: line {line}: undecodable text: invalid UTF-8 byte {data[err.start]:#04x}") from None


def _read_with_datasets(builder: str, data_files: str, label: str, limit: int | None) -> Rows:
    import datasets  # slow to import; only loading needs it

    try:
        dataset = datasets.load_dataset(builder, data_files=data_files, split="train")
    except Exception as err:  # datasets raises many types; all mean "this file cannot be read"
        raise DataError(f"{label}: cannot read it as {builder}: {err}") from err
    return _dataset_rows(dataset, label, limit)


def _read_saved(path: Path, split: str, label: str, limit: int | None) -> Rows:
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"{label}: cannot read the save_to_disk folder: {err}") from err
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(f"{label}: no split {split!r}; the folder has {sorted(saved)}")
        saved = saved[split]
    return _dataset_rows(saved, label, limit)


def _read_hub(source: str, split: str, revision: str | None, label: str, limit: int | None) -> Rows:
    import datasets

    name, _, config = source.partition(":")
    try:
        dataset = datasets.load_dataset(name, config or None, split=split, revision=revision)
    except Exception as err:  # not found, no network, unknown config, split or revision
        raise DataError(f"{label}: cannot load the hub dataset: {err}") from err
    return _dataset_rows(dataset, label, limit)


def _dataset_rows(dataset: Any, label: str, limit: int | None) -> Rows:
    return [(f"{label}: row {i}", row) for i, row in enumerate(itertools.islice(dataset, limit), 1)]
