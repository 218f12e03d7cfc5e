from __future__ import annotations

import inspect
import os
import pickle
import re
import threading
import time
from collections.abc import Iterator

import pytest
from jsonargparse import ArgumentParser

from lit_posttrain.rewards import ExactMatch, MathVerifier, NumericMatch, Verifier, VerifierTimeout
from lit_posttrain.rewards.guard import ThreadScorer


def _scripted_score(completion: str, answer: str) -> float:
    """Stand-in worker function for MathVerifier: misbehaves on request, else exact match."""
    if completion == "hang":
        time.sleep(60)
    elif completion == "crash":
        os._exit(1)
    elif completion == "raise":
        raise RuntimeError("boom")
    elif completion == "pid":
        return float(os.getpid())
    return float(completion == answer)


def _broken_score(completion: str, answer: str) -> float:
    raise ImportError("no module named math_verify")


@pytest.fixture(scope="module")
def math_verifier() -> Iterator[MathVerifier]:
    # One shared worker: each start spawns Python and imports sympy.
    verifier = MathVerifier()
    yield verifier
    verifier.close()


@pytest.fixture()
def scripted() -> Iterator[MathVerifier]:
    # The scripted worker does not import sympy, so a fresh one per test is cheap.
    verifier = MathVerifier(timeout_s=0.5, _score_fn=_scripted_score)
    yield verifier
    verifier.close()


@pytest.mark.parametrize("verifier", [ExactMatch(), NumericMatch(), MathVerifier()])
def test_verifiers_satisfy_protocol(verifier: Verifier) -> None:
    assert isinstance(verifier, Verifier)


@pytest.mark.parametrize("cls", [ExactMatch, NumericMatch, MathVerifier])
def test_every_cli_parameter_has_help(cls: type) -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "verifier")
    helps = {action.dest: action.help for action in parser._actions}
    public = [name for name in inspect.signature(cls).parameters if not name.startswith("_")]
    assert public
    for name in public:
        assert helps.get(f"verifier.{name}"), f"{cls.__name__}.{name} has no Args: entry"


# ExactMatch


def test_exact_match_equal() -> None:
    assert ExactMatch()("12", "12") == 1.0


# "012" is a near miss too: ExactMatch compares strings; NumericMatch is the one that reads values.
@pytest.mark.parametrize("completion", ["12.", " 12", "12\n", "12 ", "012", "", "The answer is 12"])
def test_exact_match_rejects_near_misses(completion: str) -> None:
    assert ExactMatch()(completion, "12") == 0.0


def test_exact_match_strip() -> None:
    verifier = ExactMatch(strip=True)
    assert verifier(" 12\n", "12") == 1.0
    assert verifier("12", " 12 ") == 1.0
    assert verifier("12.", "12") == 0.0


def test_exact_match_case() -> None:
    assert ExactMatch()("paris", "Paris") == 0.0
    assert ExactMatch(case_sensitive=False)("PARIS", "Paris") == 1.0
    assert ExactMatch(case_sensitive=False)("Paris ", "Paris") == 0.0


# NumericMatch


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("12", "12"),
        ("12.0", "12"),
        ("012", "12"),
        ("-3.5", "-3.5"),
        ("-0", "0"),
        ("1000", "1,000"),
        ("7", " 7\n"),
    ],
)
def test_numeric_strict_accepts(completion: str, answer: str) -> None:
    assert NumericMatch()(completion, answer) == 1.0


@pytest.mark.parametrize(
    "completion", ["12.", " 12", "12\n", "1,2", "+12", "1.2e1", "The answer is 12", "", "-", "13", "-12"]
)
def test_numeric_strict_rejects(completion: str) -> None:
    assert NumericMatch()(completion, "12") == 0.0


def test_numeric_strict_rejects_commas() -> None:
    assert NumericMatch()("1,000", "1000") == 0.0


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("The answer is 1,234.", "1234"),
        ("Total: $1,000,000", "1000000"),
        ("First 3, then 4, so 72", "72"),
        ("I owe -5 dollars.", "-5"),
        ("pages 3-5", "5"),  # a hyphen between numbers is not a minus sign
        ("2.5 and then 3.75.", "3.75"),
        ("12", "12"),
    ],
)
def test_numeric_last(completion: str, answer: str) -> None:
    assert NumericMatch(extract="last")(completion, answer) == 1.0


def test_numeric_last_uses_only_the_last_number() -> None:
    verifier = NumericMatch(extract="last")
    assert verifier("72, or maybe 71", "72") == 0.0
    assert verifier("no number here", "72") == 0.0


def test_numeric_tolerance() -> None:
    assert NumericMatch()("3.14", "3.1416") == 0.0
    assert NumericMatch(tolerance=0.01)("3.14", "3.1416") == 1.0
    assert NumericMatch(tolerance=0.0)("0.1", "0.1") == 1.0
    assert NumericMatch()("0.3", "0.30000001") == 1.0


def test_numeric_large_integers_compare_exactly() -> None:
    assert NumericMatch(tolerance=0.0)("9007199254740993", "9007199254740992") == 0.0


@pytest.mark.parametrize("extract", ["strict", "last"])
@pytest.mark.parametrize("answer", ["seventy", "#### 72", "", "1e3", "12."])
def test_numeric_unparseable_answer_raises(extract: str, answer: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"answer {answer!r}")):
        NumericMatch(extract=extract)("72", answer)  # type: ignore[arg-type]


def test_numeric_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="extract"):
        NumericMatch(extract="first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tolerance"):
        NumericMatch(tolerance=-1.0)


# MathVerifier


@pytest.mark.parametrize(
    ("completion", "answer", "reward"),
    [
        ("The answer is $\\boxed{0.5}$", "\\frac{1}{2}", 1.0),
        ("So the total is \\boxed{72}.", "72", 1.0),
        ("$\\frac{2}{4}$", "0.5", 1.0),
        ("x = \\boxed{-\\frac{7}{2}}", "-3.5", 1.0),
        ("\\boxed{1000}", "$\\boxed{1,000}$", 1.0),
        # The boxed answer wins over other numbers in the text.
        ("First I got 3, but checking again: \\boxed{5}", "5", 1.0),
        ("First I got 3, but checking again: \\boxed{5}", "3", 0.0),
        ("So the total is \\boxed{71}.", "72", 0.0),
        ("I do not know.", "72", 0.0),
    ],
)
def test_math_verifier(math_verifier: MathVerifier, completion: str, answer: str, reward: float) -> None:
    assert math_verifier(completion, answer) == reward


def test_math_verifier_from_another_thread(math_verifier: MathVerifier) -> None:
    results: list[float] = []
    thread = threading.Thread(target=lambda: results.append(math_verifier("$\\boxed{\\frac{3}{6}}$", "0.5")))
    thread.start()
    thread.join(timeout=60)
    assert results == [1.0]


def test_math_verifier_survives_pickling(math_verifier: MathVerifier) -> None:
    assert math_verifier("\\boxed{2}", "2") == 1.0  # make sure the worker is live
    copy = pickle.loads(pickle.dumps(math_verifier))
    try:
        assert copy("\\boxed{3}", "3") == 1.0
    finally:
        copy.close()
    assert math_verifier("\\boxed{4}", "4") == 1.0


def test_timeout_raises_and_restarts(scripted: MathVerifier) -> None:
    assert scripted("7", "7") == 1.0
    start = time.monotonic()
    with pytest.raises(VerifierTimeout, match="longer than 0.5s"):
        scripted("hang", "hang")
    assert time.monotonic() - start < 5
    assert scripted("7", "7") == 1.0


def test_a_math_verifier_timeout_in_training_scores_zero_and_counts_as_a_timeout(scripted: MathVerifier) -> None:
    scorer = ThreadScorer(timeout_s=30)  # the verifier's own bound (0.5 s) fires first
    assert scorer([lambda: scripted("hang", "hang"), lambda: scripted("7", "7")]) == [0.0, 1.0]
    assert (scorer.failures.timeouts, scorer.failures.errors) == (1, 0)
    assert scorer([lambda: scripted("crash", "crash")]) == [0.0]
    assert (scorer.failures.timeouts, scorer.failures.errors) == (1, 1)


def test_worker_crash_raises_and_restarts(scripted: MathVerifier) -> None:
    with pytest.raises(RuntimeError, match="worker process died"):
        scripted("crash", "crash")
    assert scripted("7", "7") == 1.0


def test_error_in_worker_raises(scripted: MathVerifier) -> None:
    with pytest.raises(RuntimeError, match="math verification failed"):
        scripted("raise", "raise")
    assert scripted("7", "7") == 1.0


def test_worker_that_cannot_start_raises() -> None:
    verifier = MathVerifier(_score_fn=_broken_score)
    with pytest.raises(RuntimeError, match="math_verify"):
        verifier("1", "1")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_copy_gets_its_own_worker(scripted: MathVerifier) -> None:
    parent_worker = scripted("pid", "")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must not use the parent's worker, nor return into pytest
        os.close(read_fd)
        worker_pid = -1.0
        try:
            worker_pid = scripted("pid", "")
        finally:
            os.write(write_fd, str(worker_pid).encode())
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        child_worker = float(pipe.read())
    os.waitpid(pid, 0)
    assert child_worker not in (-1.0, parent_worker)
    assert scripted("pid", "") == parent_worker


def test_math_verifier_rejects_bad_timeout() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        MathVerifier(timeout_s=0)


def test_regex_match_whole_or_prefix():
    from lit_posttrain.rewards import RegexMatch

    assert RegexMatch(r"\d+")("123", "ignored") == 1.0
    assert RegexMatch(r"\d+")("123 apples", "") == 0.0
    assert RegexMatch(r"\d", whole=False)("1 apple", "") == 1.0
    assert RegexMatch(r"\d", whole=False)("a1", "") == 0.0
    with pytest.raises(ValueError, match="not a valid regular expression"):
        RegexMatch("(")
