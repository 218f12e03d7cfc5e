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

from lit_posttrain.data.fields import check_text, describe, required, scalar_text
from lit_posttrain.data.task import DataError, Example, Message

ROLES = ("system", "user", "assistant")


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
    """`prompt`, optional `completion` (the demonstration) and optional `answer` (what the verifier
    compares against, any scalar; defaults to the completion). As TRL's datasets have them: the
    prompt a string or a chat (a list of `{"role", "content"}` turns ending with a user turn), the
    completion a string or a list of one assistant turn."""

    columns = ("prompt",)
    optional = ("completion", "answer")

    def to_example(self, row: dict, where: str) -> Example:
        messages = prompt_turns(required(row, "prompt", where), where, "prompt")
        completion = row.get("completion")
        if isinstance(completion, list):
            turns = chat_turns(completion, where, "completion")
            if [t["role"] for t in turns] != ["assistant"]:
                raise DataError(
                    f"{where}: field 'completion': expected one assistant turn, got roles {[t['role'] for t in turns]}"
                )
            completion = check_text(turns[0]["content"], where, "completion[0].content")
        elif completion is not None:
            completion = check_text(completion, where, "completion")
        answer = scalar_text(row.get("answer"), where, "answer")
        return Example(
            messages=messages,
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
        chat = chat_turns(required(row, "messages", where), where, "messages")
        demonstration = None
        if chat[-1]["role"] == "assistant":
            demonstration = check_text(chat.pop()["content"], where, f"messages[{len(chat)}].content")
        check_prompt(chat, where, "messages")
        answer = scalar_text(row.get("answer"), where, "answer")
        return Example(
            messages=chat,
            answer=demonstration if answer is None else answer,
            demonstration=demonstration,
            source=where,
            metadata=self._metadata(row),
        )


class Verl(RowFormat):
    """verl's RL layout (its parquet files): `prompt` a chat (or a string), `reward_model` a dict
    whose `ground_truth` is the answer; `data_source`, `ability` and `extra_info` are kept in the
    example's metadata. No demonstration."""

    columns = ("prompt", "reward_model")

    def to_example(self, row: dict, where: str) -> Example:
        messages = prompt_turns(required(row, "prompt", where), where, "prompt")
        reward_model = required(row, "reward_model", where)
        if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
            raise DataError(f"{where}: field 'reward_model.ground_truth': missing (got reward_model {describe(reward_model)})")
        answer = scalar_text(reward_model["ground_truth"], where, "reward_model.ground_truth")
        return Example(messages=messages, answer=answer, source=where, metadata=self._metadata(row))


def chat_turns(value: Any, where: str, field: str) -> list[Message]:
    """`value` as a chat: a non-empty list of `{"role", "content"}` dicts, roles system, user or
    assistant, a system turn only first."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {field!r}: expected a non-empty list of {{'role', 'content'}} dicts, got {describe(value)}")
    chat: list[Message] = []
    for i, message in enumerate(value):
        turn = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"{where}: field {turn!r}: expected a {{'role', 'content'}} dict, got {describe(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise DataError(f"{where}: field '{turn}.role': expected one of {', '.join(ROLES)}, got {describe(role)}")
        if role == "system" and i > 0:
            raise DataError(f"{where}: field '{turn}.role': a system turn is only allowed first")
        # Empty earlier turns are legal chat; the turns that matter are checked by the caller.
        content = check_text(message.get("content"), where, f"{turn}.content", allow_blank=True)
        chat.append({"role": role, "content": content})
    return chat


def check_prompt(chat: list[Message], where: str, field: str) -> list[Message]:
    """A prompt ends with the user turn the model answers, and that turn says something."""
    if not chat or chat[-1]["role"] != "user":
        raise DataError(f"{where}: field {field!r}: the prompt must end with a user turn, got roles {[m['role'] for m in chat]}")
    check_text(chat[-1]["content"], where, f"{field}[{len(chat) - 1}].content")
    return chat


def prompt_turns(value: Any, where: str, field: str) -> list[Message]:
    """A prompt given as a string (one user turn) or as a chat."""
    if isinstance(value, list):
        return check_prompt(chat_turns(value, where, field), where, field)
    return [{"role": "user", "content": check_text(value, where, field)}]


_GSM8K_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class GSM8K(RowFormat):
    """`question` and `answer`, the answer being worked reasoning that ends in `#### N`.

    The answer becomes N with thousands separators removed. The demonstration is the whole answer
    text verbatim, the `#### N` line and the `<<...>>` calculator notes included: a model trained on
    it ends its reply with the number, which is what `NumericMatch(extract="last")` reads.
    """

    columns = ("question", "answer")

    def to_example(self, row: dict, where: str) -> Example:
        question = check_text(required(row, "question", where), where, "question")
        solution = check_text(required(row, "answer", where), where, "answer")
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
        problem = check_text(required(row, "problem", where), where, "problem")
        solution = check_text(required(row, "solution", where), where, "solution")
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


DEFAULT_FORMATS: tuple[RowFormat, ...] = (PromptCompletion(), Messages(), GSM8K(), MATH(), Verl())


def detect_format(
    column_names: Sequence[str], where: str, formats: Sequence[RowFormat] = DEFAULT_FORMATS
) -> RowFormat:
    """The format whose required columns are all present, the most specific where several are
    (verl's `prompt` + `reward_model` over a plain `prompt`); a `DataError` otherwise."""
    found = [f for f in formats if f.matches(column_names)]
    widest = [f for f in found if all(set(g.columns) <= set(f.columns) for g in found)]
    if len(widest) == 1:
        return widest[0]
    problem = "no format matches" if not found else f"several formats match ({', '.join(map(repr, found))})"
    known = "; ".join(f"{f!r}: {f.describe_columns()}" for f in formats)
    raise DataError(
        f"{where}: cannot tell the row format from the columns {list(column_names)}: {problem}. "
        f"Pass `format` explicitly. Formats and their columns ([optional]): {known}"
    )
