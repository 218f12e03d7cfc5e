import pytest

from lit_posttrain.data import DataError, Example, Row, TaskDataModule
from lit_posttrain.data.arithmetic import Arithmetic
from lit_posttrain.data.batches import Batches
from lit_posttrain.data.datamodule import pack_demonstrations, tokenize_rows
from lit_posttrain.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def _examples():
    return [
        Example([{"role": "user", "content": "short"}], answer="1", demonstration="1", source="f.jsonl:row 1"),
        Example([{"role": "user", "content": "x" * 40}], answer="2", demonstration="22", source="f.jsonl:row 2"),
        Example([{"role": "user", "content": "ok"}], answer="3", demonstration="3" * 9, source="f.jsonl:row 3"),
    ]


def test_overflow_error_names_the_row_and_the_limit(tokenizer):
    with pytest.raises(DataError, match=r"f\.jsonl:row 2: prompt has \d+ tokens > max_prompt_tokens=20"):
        tokenize_rows(_examples(), tokenizer, max_prompt_tokens=20, max_completion_tokens=20, overflow="error")


def test_overflow_truncate_and_skip_count_every_row(tokenizer):
    rows, counts = tokenize_rows(_examples(), tokenizer, 20, 5, overflow="truncate")
    assert len(rows) == 3
    assert (counts.prompts_truncated, counts.completions_truncated, counts.rows_skipped) == (1, 1, 0)
    assert len(rows[1].prompt_ids) == 20 and rows[1].prompt_ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert rows[2].completion_ids == tokenizer("33333", add_special_tokens=False)["input_ids"]  # no EOS: it was cut
    rows, counts = tokenize_rows(_examples(), tokenizer, 20, 5, overflow="skip")
    assert [r.example.source for r in rows] == ["f.jsonl:row 1"]
    assert counts.rows_skipped == 2


def test_pack_demonstrations_masks_prompt_and_padding(tokenizer):
    rows, _ = tokenize_rows(_examples()[:2], tokenizer, 100, 100, "error")
    tokens_BT, attention_BT, mask_BT = pack_demonstrations(rows, tokenizer.pad_token_id)
    assert tokens_BT.shape == attention_BT.shape == mask_BT.shape
    for b, row in enumerate(rows):
        start = len(row.prompt_ids)
        assert mask_BT[b].sum() == len(row.completion_ids)
        assert tokens_BT[b, start:][mask_BT[b, start:]].tolist() == row.completion_ids
        assert tokens_BT[b, -1] == tokenizer.pad_token_id or attention_BT[b].all()
    assert tokenizer.decode(tokens_BT[1][mask_BT[1]]) == "22</s>"


def _rows(lengths):
    return [Row(Example([{"role": "user", "content": str(i)}]), [0], [1] * n) for i, n in enumerate(lengths)]


def test_batches_keep_the_order_and_end_with_the_remainder():
    batches = list(Batches(_rows([1, 2, 3, 4, 5]), batch_size=2, shuffle=False))
    assert [[len(row.completion_ids) for row in b.rows] for b in batches] == [[1, 2], [3, 4], [5]]


def test_ranks_split_each_global_batch():
    rows = _rows([1, 2, 3, 4, 5, 6, 7, 8])
    ranks = [list(Batches(rows, 2, rank=r, world_size=2, seed=1)) for r in range(2)]
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [2, 2]
    seen = [row.example.messages[0]["content"] for batches in ranks for b in batches for row in b.rows]
    assert sorted(seen) == [str(i) for i in range(8)]  # every row once, across ranks


def test_shuffle_depends_on_seed_and_epoch():
    rows = _rows(range(1, 17))
    epoch = {"n": 0}
    data = Batches(rows, 4, seed=0, epoch_fn=lambda: epoch["n"])

    def order():
        return [row.example.messages[0]["content"] for b in data for row in b.rows]

    first = order()
    assert order() == first
    epoch["n"] = 1
    assert order() != first and sorted(order()) == sorted(first)


def test_setup_uses_the_modules_tokenizer_and_refuses_an_empty_training_set(tokenizer):
    data = TaskDataModule(Arithmetic(num_train=4, num_eval=2), max_prompt_tokens=10, overflow="skip")
    data.tokenizer = tokenizer
    with pytest.raises(DataError, match="no training rows left"):
        data.setup("fit")
