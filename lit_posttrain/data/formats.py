"""Row formats: how one row of a data file becomes an `Example`.

Each format is a small class passed to the loader (or picked from the column names by
`detect_format`), so a new shape of data is a new class rather than another branch in the loader.
Every row is validated as it is converted; a `DataError` names the location (`where`, e.g.
"data/train.jsonl: row 7") and the field, e.g.
``data/train.jsonl: row 7: field 'question': expected a non-empty string, got int 5``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from lit_posttrain.data.task import DataError, Example, Message

ROLES = ("system", "user", "assistant")


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
        raise DataError(
            f"{where}: field {field!r}: expected {expected}, got {describe(value)} (undecodable text?)"
        )
    if not isinstance(value, str) or (not allow_blank and not value.strip()):
        raise DataError(f"{where}: field {field!r}: expected {expected}, got {describe(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        # A JSON "\ud800" escape decodes to a lone surrogate, which no tokenizer can encode.
        raise DataError(
            f"{where}: field {field!r}: undecodable text ({err.reason} at character {err.start})"
        ) from None
    return value


def _required(row: dict, field: str, where: str) -> Any:
    # Loaders that build a table (datasets) fill a column absent from a row with None, so a null
    # and a missing key are the same error.
    value = row.get(field)
    if value is None:
        present = ", ".join(str(k) for k, v in row.items() if v is not None) or "no fields"
        raise DataError(f"{where}: field {field!r}: missing or null (the row has: {present})")
    return value


def _optional_text(row: dict, field: str, where: str) -> str | None:
    value = row.get(field)
    return None if value is None else check_text(value, where, field)


def _answer_column(row: dict, where: str) -> str | None:
    """The optional `answer` column. Integers are accepted because many datasets store numeric
    answers as numbers; the verifiers compare strings."""
    value = row.get("answer")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _optional_text(row, "answer", where)


class RowFormat:
    """Turns one row (a dict of column values) into an `Example`.

    Subclasses set `columns` (required), `optional` (read when present) and implement
    `to_example`. Columns the format does not read are kept in `Example.metadata`.
    """

    columns: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def matches(self, column_names: Iterable[str]) -> bool:
        return set(self.columns) <= set(column_names)

    def to_example(self, row: dict, where: str) -> Example:
        raise NotImplementedError

    def describe_columns(self) -> str:
        return ", ".join([*self.columns, *(f"[{c}]" for c in self.optional)])

    def _metadata(self, row: dict) -> dict:
        used = {*self.columns, *self.optional}
        return {k: v for k, v in row.items() if k not in used}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PromptCompletion(RowFormat):
    """`prompt` (non-empty string), optional `completion` (the demonstration) and optional `answer`
    (what the verifier compares against; defaults to the completion)."""

    columns = ("prompt",)
    optional = ("completion", "answer")

    def to_example(self, row: dict, where: str) -> Example:
        prompt = check_text(_required(row, "prompt", where), where, "prompt")
        completion = _optional_text(row, "completion", where)
        answer = _answer_column(row, where)
        return Example(
            messages=[{"role": "user", "content": prompt}],
            answer=completion if answer is None else answer,
            demonstration=completion,
            source=where,
            metadata=self._metadata(row),
        )


class Messages(RowFormat):
    """`messages`: a chat, a list of `{"role", "content"}` dicts (roles system/user/assistant, a
    system turn only first). A final assistant turn is the demonstration, and the answer unless an
    `answer` column is present; the prompt is what precedes it and must end with a user turn."""

    columns = ("messages",)
    optional = ("answer",)

    def to_example(self, row: dict, where: str) -> Example:
        chat = self._chat(_required(row, "messages", where), where)
        demonstration = None
        if chat[-1]["role"] == "assistant":
            demonstration = check_text(chat.pop()["content"], where, f"messages[{len(chat)}].content")
        if not chat or chat[-1]["role"] != "user":
            raise DataError(
                f"{where}: field 'messages': the prompt must end with a user turn, "
                f"got roles {[m['role'] for m in chat]}"
            )
        check_text(chat[-1]["content"], where, f"messages[{len(chat) - 1}].content")
        answer = _answer_column(row, where)
        return Example(
            messages=chat,
            answer=demonstration if answer is None else answer,
            demonstration=demonstration,
            source=where,
            metadata=self._metadata(row),
        )

    @staticmethod
    def _chat(value: Any, where: str) -> list[Message]:
        if not isinstance(value, list) or not value:
            raise DataError(
                f"{where}: field 'messages': expected a non-empty list of "
                f"{{'role', 'content'}} dicts, got {describe(value)}"
            )
        chat: list[Message] = []
        for i, message in enumerate(value):
            field = f"messages[{i}]"
            if not isinstance(message, dict):
                raise DataError(
                    f"{where}: field {field!r}: expected a {{'role', 'content'}} dict, "
                    f"got {describe(message)}"
                )
            role = message.get("role")
            if role not in ROLES:
                raise DataError(
                    f"{where}: field '{field}.role': expected one of {', '.join(ROLES)}, got {describe(role)}"
                )
            if role == "system" and i > 0:
                raise DataError(f"{where}: field '{field}.role': a system turn is only allowed first")
            # Empty earlier turns are legal chat; the turns that matter are checked by the caller.
            content = check_text(message.get("content"), where, f"{field}.content", allow_blank=True)
            chat.append({"role": role, "content": content})
        return chat


_GSM8K_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class GSM8K(RowFormat):
    """`question` and `answer`, the answer being worked reasoning that ends in `#### N`.

    The answer becomes N with thousands separators removed. The demonstration is the whole answer
    text verbatim, the `#### N` line and the `<<...>>` calculator notes included: a model trained on
    it ends its reply with the number, which is what `NumericMatch(extract="last")` reads.
    """

    columns = ("question", "answer")

    def to_example(self, row: dict, where: str) -> Example:
        question = check_text(_required(row, "question", where), where, "question")
        solution = check_text(_required(row, "answer", where), where, "answer")
        _, marker, final = solution.rpartition("####")
        if not marker:
            raise DataError(f"{where}: field 'answer': no '#### <number>' line at the end (GSM8K format)")
        number = final.strip().replace(",", "")
        if not _GSM8K_NUMBER.fullmatch(number):
            raise DataError(f"{where}: field 'answer': expected a number after '####', got {final.strip()!r}")
        return Example(
            messages=[{"role": "user", "content": question}],
            answer=number,
            demonstration=solution,
            source=where,
            metadata=self._metadata(row),
        )


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text`, nested braces included; None if there is
    none or its braces do not close."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    begin = start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None


class MATH(RowFormat):
    """`problem` and `solution`; the answer is the content of the solution's last `\\boxed{...}`,
    the demonstration the whole solution."""

    columns = ("problem", "solution")

    def to_example(self, row: dict, where: str) -> Example:
        problem = check_text(_required(row, "problem", where), where, "problem")
        solution = check_text(_required(row, "solution", where), where, "solution")
        answer = last_boxed(solution)
        if answer is None or not answer.strip():
            raise DataError(f"{where}: field 'solution': no complete, non-empty \\boxed{{...}} answer")
        return Example(
            messages=[{"role": "user", "content": problem}],
            answer=answer.strip(),
            demonstration=solution,
            source=where,
            metadata=self._metadata(row),
        )


DEFAULT_FORMATS: tuple[RowFormat, ...] = (PromptCompletion(), Messages(), GSM8K(), MATH())


def detect_format(
    column_names: Sequence[str], where: str, formats: Sequence[RowFormat] = DEFAULT_FORMATS
) -> RowFormat:
    """The one format whose required columns are all present; a `DataError` otherwise."""
    found = [f for f in formats if f.matches(column_names)]
    if len(found) == 1:
        return found[0]
    problem = "no format matches" if not found else f"several formats match ({', '.join(map(repr, found))})"
    known = "; ".join(f"{f!r}: {f.describe_columns()}" for f in formats)
    raise DataError(
        f"{where}: cannot tell the row format from the columns {list(column_names)}: {problem}. "
        f"Pass `format` explicitly. Formats and their columns ([optional]): {known}"
    )
