import pytest

from lit_posttrain.data.arithmetic import Arithmetic


def _problems(examples):
    return [ex.messages[-1]["content"] for ex in examples]


def test_splits_are_deterministic_and_disjoint():
    task = Arithmetic(ops=["+", "-", "*"], digits=2, num_train=300, num_eval=100, seed=3)
    again = Arithmetic(ops=["+", "-", "*"], digits=2, num_train=300, num_eval=100, seed=3)
    train, held_out = _problems(task.train_examples()), _problems(task.eval_examples())
    assert train == _problems(again.train_examples())
    assert len(set(train)) == 300 and len(set(held_out)) == 100
    assert not set(train) & set(held_out)
    shot = task.train_examples()[0].messages[0]["content"]
    assert shot not in train and shot not in held_out
    assert _problems(Arithmetic(ops=["+"], seed=4).train_examples()) != _problems(Arithmetic(ops=["+"], seed=3).train_examples())


def test_held_out_split_does_not_depend_on_train_size():
    small = Arithmetic(digits=2, num_train=10, num_eval=20)
    large = Arithmetic(digits=2, num_train=500, num_eval=20)
    assert _problems(small.eval_examples()) == _problems(large.eval_examples())


def test_answers_are_right_and_never_negative():
    task = Arithmetic(ops=["+", "-", "*"], digits=2, num_train=200, num_eval=0, shots=0)
    for ex in task.train_examples():
        question = ex.messages[-1]["content"]
        expr = question.removeprefix("What is ").removesuffix("? Reply with only the number.")
        assert ex.answer == str(eval(expr)) == ex.demonstration
        assert not ex.answer.startswith("-")


def test_one_shot_prompt_shape():
    ex = Arithmetic(shots=1).train_examples()[0]
    assert [m["role"] for m in ex.messages] == ["user", "assistant", "user"]
    assert ex.messages[1]["content"].isdigit()


@pytest.mark.parametrize(
    ("completion", "reward"),
    [("12", 1.0), ("12.", 0.0), (" 12", 0.0), ("12\n", 0.0), ("012", 0.0), ("7 + 5 = 12", 0.0), ("13", 0.0)],
)
def test_strict_verifier_rejects_near_misses(completion, reward):
    task = Arithmetic()
    assert task.reward([], completion, "12") == reward


def test_demonstration_style_and_its_checks():
    task = Arithmetic(demonstration="{a} {op} {b} = {answer}. The answer is {answer}.", shots=0, num_train=3, num_eval=1)
    for ex in task.train_examples():
        a, _, b = ex.messages[-1]["content"].removeprefix("What is ").split("?")[0].split()
        assert ex.demonstration == f"{a} + {b} = {ex.answer}. The answer is {ex.answer}."
    with pytest.raises(ValueError, match=r"must contain \{answer\}"):
        Arithmetic(demonstration="{a} plus {b}")
    with pytest.raises(ValueError, match=r"only \{a\}, \{op\}, \{b\} and \{answer\}"):
        Arithmetic(demonstration="{answer} {c}")


def test_impossible_request_is_refused():
    with pytest.raises(ValueError, match="only 100"):
        Arithmetic(ops=["+"], digits=1, num_train=100, num_eval=10)
    with pytest.raises(ValueError, match="unknown operations"):
        Arithmetic(ops=["^"])
    with pytest.raises(ValueError, match=r"\{b\}"):
        Arithmetic(template="What is {a} {op}?")


def test_max_operand_overrides_digits():
    task = Arithmetic(max_operand=20, num_train=300, num_eval=100)
    assert task.num_problems() == 21 * 21
    operands = {int(x) for ex in task.train_examples() for x in ex.messages[-1]["content"].split("?")[0].split()[2::2]}
    assert max(operands) == 20 and min(operands) == 0
