"""Sanity checks for the general-knowledge forgetting probe set (multiple choice, 4 options)."""

import json
from collections import Counter
from pathlib import Path

import pytest

PROBE_FILE = (
    Path(__file__).resolve().parents[1] / "lit_posttrain" / "data" / "probes" / "general_knowledge.jsonl"
)
EXPECTED_KEYS = {"question", "choices", "answer", "topic"}


def _load() -> list[dict]:
    items = []
    with PROBE_FILE.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            assert line.strip(), f"line {lineno} is blank"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                pytest.fail(f"line {lineno} is not valid JSON: {err}")
            assert isinstance(item, dict), f"line {lineno} is not a JSON object"
            items.append(item)
    return items


@pytest.fixture(scope="module")
def items() -> list[dict]:
    assert PROBE_FILE.is_file(), f"missing probe file {PROBE_FILE}"
    return _load()


def test_has_enough_items(items):
    assert len(items) >= 200


def test_every_item_is_well_formed(items):
    for i, item in enumerate(items):
        assert set(item) == EXPECTED_KEYS, f"item {i} has keys {sorted(item)}"
        question, choices, answer, topic = item["question"], item["choices"], item["answer"], item["topic"]
        assert isinstance(question, str) and question.strip(), f"item {i}: empty question"
        assert isinstance(topic, str) and topic.strip(), f"item {i}: empty topic"
        assert isinstance(choices, list) and len(choices) == 4, f"item {i}: needs exactly 4 choices"
        assert all(isinstance(c, str) and c.strip() for c in choices), f"item {i}: empty or non-string choice"
        assert len({c.strip().lower() for c in choices}) == 4, f"item {i}: choices are not distinct"
        assert type(answer) is int and 0 <= answer <= 3, f"item {i}: answer must be an int in 0..3"


def test_questions_are_unique(items):
    counts = Counter(item["question"].strip().lower() for item in items)
    duplicates = [q for q, n in counts.items() if n > 1]
    assert not duplicates, f"duplicate questions: {duplicates}"


def test_covers_enough_topics(items):
    assert len({item["topic"] for item in items}) >= 12


def test_answer_indices_are_balanced(items):
    counts = Counter(item["answer"] for item in items)
    total = len(items)
    for index in range(4):
        share = counts[index] / total
        assert 0.15 <= share <= 0.35, f"answer index {index} is correct for {share:.1%} of items"
