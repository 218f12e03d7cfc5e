import json
import warnings
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_posttrain.data.files import FileTask
from lit_posttrain.data.formats import GSM8K, MATH, Messages, PromptCompletion, detect_format, last_boxed
from lit_posttrain.data.loaders import load_examples
from lit_posttrain.data.task import DataError
from lit_posttrain.rewards import ExactMatch, NumericMatch

DATA = Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    # Keep the Arrow files that datasets writes for .json/.parquet out of the user's cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def prompts(examples: list) -> list[str]:
    return [ex.messages[-1]["content"] for ex in examples]


# --- formats --------------------------------------------------------------------------------------


def test_prompt_completion():
    source = str(DATA / "prompt_completion.jsonl")
    examples = load_examples(source)
    assert [ex.messages for ex in examples] == [
        user("What is 2 + 3?"),
        user("Name the capital of France."),
        user("Say hello."),
    ]
    assert [(ex.answer, ex.demonstration) for ex in examples] == [
        ("5", "5"),
        ("paris", "Paris"),
        (None, None),
    ]
    # The blank line 2 is skipped but counted: rows carry their line numbers.
    assert [ex.source for ex in examples] == [f"{source}: row {n}" for n in (1, 3, 4)]
    assert examples[1].metadata == {"id": "geo-1"}


def test_messages():
    first, second = load_examples(str(DATA / "messages.jsonl"))
    assert first.messages == [{"role": "system", "content": "You are terse."}, *user("What is 6 * 7?")]
    assert (first.answer, first.demonstration) == ("42", "42")
    assert second.messages[-1] == {"role": "user", "content": "What is 1 + 1?"}
    assert len(second.messages) == 3
    assert (second.answer, second.demonstration) == ("2", None)


def test_gsm8k():
    examples = load_examples(str(DATA / "gsm8k.jsonl"))
    assert [ex.answer for ex in examples] == ["72", "1234", "-2.5"]
    assert examples[0].messages == user(
        json.loads((DATA / "gsm8k.jsonl").read_text().splitlines()[0])["question"]
    )
    assert examples[0].demonstration.startswith("Natalia sold 48/2")
    assert examples[0].demonstration.endswith("#### 72")
    assert NumericMatch(extract="last")(examples[1].demonstration, examples[1].answer) == 1.0


def test_math_takes_last_boxed_with_nested_braces():
    first, second = load_examples(str(DATA / "math.jsonl"))
    assert first.answer == "\\frac{3}{4}"
    assert second.answer == "2"
    assert first.demonstration.startswith("We have")
    assert first.metadata == {"level": "Level 1", "type": "Prealgebra"}
    assert last_boxed("a \\boxed{\\sqrt{x^{2}}} b") == "\\sqrt{x^{2}}"
    assert last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["prompt", "completion"], PromptCompletion),
        (["messages", "id"], Messages),
        (["question", "answer"], GSM8K),
        (["problem", "solution", "level"], MATH),
    ],
)
def test_detect_format(columns, expected):
    assert type(detect_format(columns, "x")) is expected


@pytest.mark.parametrize("row", [{"text": "hi"}, {"prompt": "hi", "messages": []}])
def test_undetectable_format_lists_columns_and_formats(tmp_path, row):
    source = write_jsonl(tmp_path / "odd.jsonl", [row])
    with pytest.raises(DataError) as err:
        load_examples(source)
    message = str(err.value)
    assert source in message and str(list(row)) in message
    assert (
        "GSM8K(): question, answer" in message
        and "PromptCompletion(): prompt, [completion], [answer]" in message
    )


def test_explicit_format_overrides_detection(tmp_path):
    source = write_jsonl(
        tmp_path / "both.jsonl", [{"prompt": "p", "messages": [{"role": "user", "content": "m"}]}]
    )
    assert load_examples(source, format=Messages())[0].messages == user("m")
    assert load_examples(source, format=PromptCompletion())[0].messages == user("p")


# --- other file types -----------------------------------------------------------------------------


def test_parquet_and_json(tmp_path):
    rows = [{"question": "q1", "answer": "so\n#### 3"}, {"question": "q2", "answer": "so\n#### 4"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "gsm.parquet")
    (tmp_path / "gsm.json").write_text(json.dumps(rows), encoding="utf-8")
    for name in ("gsm.parquet", "gsm.json"):
        examples = load_examples(str(tmp_path / name))
        assert [ex.answer for ex in examples] == ["3", "4"]
        assert examples[1].source == f"{tmp_path / name}: row 2"


def test_parquet_undecodable_bytes(tmp_path):
    table = pa.table({"prompt": pa.array([b"fine", b"bad \xff"], type=pa.binary())})
    pq.write_table(table, tmp_path / "bytes.parquet")
    source = str(tmp_path / "bytes.parquet")
    with pytest.raises(DataError, match=r"bytes\.parquet: row 1: field 'prompt': .*got bytes b'fine'"):
        load_examples(source)


def test_json_invalid_utf8_names_line(tmp_path):
    (tmp_path / "bad.json").write_bytes(b'[{"prompt": "a"},\n {"prompt": "\xff"}]')
    with pytest.raises(DataError, match=r"bad\.json: line 2: undecodable text"):
        load_examples(str(tmp_path / "bad.json"))


# --- malformed rows -------------------------------------------------------------------------------

GOOD = '{"question": "q", "answer": "r\\n#### 1"}'
MALFORMED = {
    "missing field": ('{"question": "q"}', "answer", "missing"),
    "wrong type": ('{"question": 5, "answer": "r\\n#### 1"}', "question", "got int 5"),
    "empty prompt": ('{"question": "", "answer": "r\\n#### 1"}', "question", "non-empty string"),
    "blank prompt": ('{"question": "  \\n ", "answer": "r\\n#### 1"}', "question", "non-empty string"),
    "missing ####": ('{"question": "q", "answer": "no marker"}', "answer", "####"),
    "#### not a number": ('{"question": "q", "answer": "r\\n#### many"}', "answer", "'many'"),
    "lone surrogate": ('{"question": "q\\ud800", "answer": "r\\n#### 1"}', "question", "undecodable"),
    "messages not a list": ('{"messages": "hi"}', "messages", "got str 'hi'"),
    "bad role": ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role", "got str 'bot'"),
    "no user turn": ('{"messages": [{"role": "assistant", "content": "x"}]}', "messages", "end with a user"),
    "late system": (
        '{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}]}',
        "messages[1].role",
        "only allowed first",
    ),
    "content not str": ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content", "got int 3"),
    "no boxed": ('{"problem": "p", "solution": "it is 4"}', "solution", "boxed"),
    "unclosed boxed": ('{"problem": "p", "solution": "\\\\boxed{4"}', "solution", "boxed"),
    "completion wrong type": ('{"prompt": "p", "completion": 5}', "completion", "got int"),
    "completion list of text": ('{"prompt": "p", "completion": ["a"]}', "completion[0]", "expected a {'role', 'content'} dict"),
    "completion two turns": ('{"prompt": "p", "completion": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}', "completion", "expected one assistant turn"),
    "prompt chat ends with assistant": ('{"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}', "prompt", "must end with a user turn"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_row_names_file_row_and_field(tmp_path, case):
    line, field, detail = MALFORMED[case]
    path = tmp_path / "train.jsonl"
    # A good row and blank lines first: the bad row is line 4, and its row number says so.
    path.write_text(f"{_good_row_like(line)}\n\n\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_examples(str(path))
    message = str(err.value)
    assert f"{path}: row 4: field '{field}'" in message, message
    assert detail in message, message


def _good_row_like(line: str) -> str:
    """A valid row of the same format as `line`, so that detection picks that format."""
    row = json.loads(line)
    if "messages" in row:
        return '{"messages": [{"role": "user", "content": "fine"}]}'
    if "problem" in row:
        return '{"problem": "p", "solution": "\\\\boxed{1}"}'
    if "prompt" in row:
        return '{"prompt": "fine"}'
    return GOOD


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b'{"question": "q", "answer": "\xff\\n#### 1"}\n',
            "row 2: field 'answer': undecodable text: invalid UTF-8 byte 0xff",
        ),
        (b'{"question": "q" "answer": "r"}\n', "row 2: invalid JSON: Expecting ',' delimiter at column 18$"),
        # A missing '}': at the row's last column, not "column 1" of a line that is not there.
        (b'{"question": "q", "answer": "r"\n', r"row 2: invalid JSON: Expecting ',' delimiter at column 32 \(the end of the row\)$"),
        (b'{"question": "q", \xff}\n', "row 2: undecodable text: invalid UTF-8 byte 0xff"),
        (b'["q", "a"]\n', "row 2: expected a JSON object, got list"),
    ],
)
def test_malformed_line(tmp_path, content, expected):
    path = tmp_path / "lines.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + content)
    with pytest.raises(DataError, match=f"^{path}: {expected}"):
        load_examples(str(path))


@pytest.mark.parametrize("content", [b"", b"\n  \n"])
def test_empty_file(tmp_path, content):
    (tmp_path / "empty.jsonl").write_bytes(content)
    with pytest.raises(DataError, match=r"empty\.jsonl: empty"):
        load_examples(str(tmp_path / "empty.jsonl"))


def test_missing_file_lists_accepted_forms(tmp_path):
    with pytest.raises(
        DataError, match=r"nope\.jsonl: no such file; accepted: .*\.parquet.*owner/name:config"
    ):
        load_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        load_examples("data/train.csv")
    (tmp_path / "rows.tsv").write_text("prompt\nhi\n")
    with pytest.raises(DataError, match="unsupported file type '.tsv'"):
        load_examples(str(tmp_path / "rows.tsv"))


# --- loader options -------------------------------------------------------------------------------


def test_system_prompt_and_template():
    examples = load_examples(
        str(DATA / "gsm8k.jsonl"),
        system_prompt="Be brief.",
        prompt_template="{prompt}\nReply with only the number.",
        limit=2,
    )
    assert len(examples) == 2
    question = examples[0].messages[1]["content"]
    assert examples[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert question.startswith("Natalia") and question.endswith("?\nReply with only the number.")
    # In a chat the template goes on the last user turn, the one the model answers.
    chat = load_examples(str(DATA / "messages.jsonl"), prompt_template="Q: {prompt}")[1].messages
    assert [m["content"] for m in chat] == ["Hi", "Hello!", "Q: What is 1 + 1?"]


def test_system_prompt_clashes_with_row_system_turn():
    with pytest.raises(
        DataError, match=r"messages\.jsonl: row 1: field 'messages': the row has its own system"
    ):
        load_examples(str(DATA / "messages.jsonl"), system_prompt="Be brief.")


@pytest.mark.parametrize("template", ["no field", "{question}", "{prompt} {}", "{prompt} {oops"])
def test_bad_template(template):
    with pytest.raises(ValueError, match="prompt_template"):
        load_examples(str(DATA / "gsm8k.jsonl"), prompt_template=template)


# --- FileTask -------------------------------------------------------------------------------------


@pytest.fixture
def numbers(tmp_path) -> str:
    return write_jsonl(
        tmp_path / "numbers.jsonl", [{"prompt": f"p{i}", "completion": str(i)} for i in range(50)]
    )


def test_file_task_split_is_deterministic_and_disjoint(numbers):
    task = FileTask(numbers, eval_fraction=0.2, seed=3)
    train, held_out = task.train_examples(), task.eval_examples()
    assert (len(train), len(held_out)) == (40, 10)
    assert set(prompts(train)).isdisjoint(prompts(held_out))
    assert sorted(prompts(train) + prompts(held_out)) == sorted(f"p{i}" for i in range(50))
    assert prompts(FileTask(numbers, eval_fraction=0.2, seed=3).eval_examples()) == prompts(held_out)
    assert prompts(FileTask(numbers, eval_fraction=0.2, seed=4).eval_examples()) != prompts(held_out)
    assert task.train_examples() is train  # loaded once
    assert task.name == "numbers"
    assert task.reward(train[0].messages, f" {train[0].answer}\n", train[0].answer) == 1.0


def test_file_task_explicit_eval_drops_overlap(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    held_out = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "b"}, {"prompt": "c"}])
    task = FileTask(train, eval=held_out, verifier=ExactMatch())
    with pytest.warns(UserWarning, match=r"dropped 1 held-out row.*test\.jsonl: row 1"):
        assert [ex.messages for ex in task.eval_examples()] == [user("c")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(task.train_examples()) == 2


def test_file_task_gsm8k_with_numeric_verifier():
    task = FileTask(str(DATA / "gsm8k.jsonl"), verifier=NumericMatch(extract="last"), eval_fraction=0.34)
    assert len(task.train_examples()) == 2 and len(task.eval_examples()) == 1
    assert all(task.reward(ex.messages, ex.demonstration, ex.answer) == 1.0 for ex in task.train_examples())


def test_file_task_too_few_rows(tmp_path):
    with pytest.raises(DataError, match="too few"):
        FileTask(write_jsonl(tmp_path / "one.jsonl", [{"prompt": "a"}])).train_examples()
    with pytest.raises(ValueError, match="eval_fraction"):
        FileTask("x.jsonl", eval_fraction=1.0)
